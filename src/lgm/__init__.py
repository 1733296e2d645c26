"""lgm: learning generative models. Flow models live in `lgm.flow`."""

__version__ = "0.1.0"
