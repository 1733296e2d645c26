"""The ``lgm-flow`` command line: ``lgm-flow fit|validate|test|sample|evaluate|classifier``."""

from lgm.cli.main import main

__all__ = ["main"]
