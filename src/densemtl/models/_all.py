"""Imports every model module so that each registers itself."""

from . import baselines, mtan  # noqa: F401
from . import atinet  # noqa: F401  (ATI-Net, issue 5)
