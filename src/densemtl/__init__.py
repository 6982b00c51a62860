"""densemtl: multi-task dense scene understanding (MTAN, SCA-MTL, ATI-Net and their baselines)."""

__version__ = "0.1.0"
