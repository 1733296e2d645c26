"""Helpers shared by every layer: atomic file writes (`lgm.utils.files`)."""
