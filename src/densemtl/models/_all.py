"""Imports every model module so that each registers itself."""

from . import baselines, deeplab, mtan  # noqa: F401
from . import atinet  # noqa: F401  (ATI-Net, issue 5)
from . import mtinet, padnet, sca  # noqa: F401  (MTI-Net, PAD-Net, SCA-MTL, issue 4)
