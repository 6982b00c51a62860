"""Named training recipes: nested config overrides applied under a YAML file and flags.

``densemtl train --preset NAME`` layers :func:`get_preset` (NAME) over the defaults; a YAML file
(``--config``) and explicit flags still override it (see :mod:`densemtl.engine.config`). Each
preset is a plain dict in :data:`PRESETS`, with what it reproduces described in :data:`NOTES`.
"""

from __future__ import annotations

import copy

from .errors import unknown_name

PRESETS: dict[str, dict] = {}
NOTES: dict[str, str] = {}

# ATI-Net (SPEC 5.7), issue 5.
PRESETS["atinet"] = {
    "data": {"name": "nyuv2", "size": "288x384", "tasks": ["semantic", "depth", "normal"]},
    "model": {"name": "atinet", "width": 1.0},  # options left at their defaults (mode=replace)
    "weighting": {"name": "dwa", "options": {"T": 2.0}},
    "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0},
    "schedule": {"name": "step", "step_size": None, "gamma": 0.5},
    "epochs": 200,
    "batch_size": 2,
    "last_k": 10,  # MTAN's protocol: the mean of the last 10 epochs' test numbers
}
NOTES["atinet"] = """ATI-Net on NYUv2 (13 classes, 288x384) with MTAN's recipe, as the paper reports it:
Adam lr 1e-4, halved at the midpoint (step schedule, step_size = half the epochs), 200 epochs,
batch 2, DWA with temperature 2, summary over the last 10 epochs, the paper's data flow (the
default mode=replace). Pass --data-root. The preset sets no model options, so `--model mtan`
runs the same recipe for MTAN.

The official code trains differently: it warm-starts from an MTAN checkpoint trained for half
the schedule (100 epochs) and continues for the second half (100 epochs) at a constant lr 5e-5
(its StepLR period, 101 epochs, never fires). To reproduce that:

    densemtl train --preset atinet --model mtan --epochs 100 --schedule none \\
        --out runs/mtan-half ...
    densemtl train --preset atinet --init-from runs/mtan-half --epochs 100 --lr 5e-5 \\
        --schedule none ...

(--init-from loads every MTAN tensor whose name and shape match; see
densemtl.engine.warmstart.init_from_checkpoint.) The two stages together equal MTAN's 200
epochs with the learning rate halved at the midpoint, except that the second half trains
ATI-Net's new branch from scratch and starts fresh Adam moments and DWA weights."""


def get_preset(name: str) -> dict:
    """A fresh copy of preset ``name``'s nested overrides; UserError lists the valid names."""
    if name not in PRESETS:
        raise unknown_name("preset", name, PRESETS)
    return copy.deepcopy(PRESETS[name])
