"""Multi-task optimisation methods: loss weightings and gradient-level methods, one registry.

``make_weighting(name, task_names, **options)`` builds one; ``list_weightings()`` names them;
``describe_weighting(name)`` says what each needs and which options it takes. The interfaces
are in :mod:`densemtl.weighting.base`, the methods in :mod:`.loss` and :mod:`.gradient`.
"""

from .base import (  # noqa: F401
    SCOPES, GradientWeighting, SolverFailure, StepContext, Weighting, describe_weighting, list_weightings,
    make_weighting, register_weighting, weighting_class, weighting_options,
)
from . import loss  # noqa: F401  (registers the loss-level methods)
from . import gradient  # noqa: F401
from . import surgery  # noqa: F401
from .loss import DWA, Equal, Fixed, LambdaWeighting, Uncertainty  # noqa: F401
