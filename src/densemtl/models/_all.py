"""Imports every model module so that each registers itself."""

from . import mtan  # noqa: F401
