"""Imports every model module so that each registers itself."""

from . import baselines, mtan  # noqa: F401
