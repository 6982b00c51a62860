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


# SCA-MTL and its baselines on NYUD-v2 (SPEC 5.5, 5.6), issue 4.
PRESETS["sca_mtl"] = {
    "data": {"name": "nyud", "size": "480x640", "tasks": ["semantic", "depth"], "augment": True},
    "model": {"name": "sca_mtl", "width": 1.0},
    "weighting": {"name": "fixed", "options": {"weights": {"semantic": 1.44, "depth": 1.15}}},
    "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 1e-4},
    "schedule": {"name": "poly", "power": 0.9},
    "epochs": 100,
    "batch_size": 10,
    "last_k": 10,
}
NOTES["sca_mtl"] = """SCA-MTL on NYUD-v2 (40 classes, 480x640, semantic + depth) with the official recipe:
Adam lr 1e-4, weight decay 1e-4, poly schedule (1 - epoch/epochs)^0.9, 100 epochs, batch 10,
random scale (1, 1.2, 1.5) and flip; deep-supervision losses at every scale are added to their
task's loss. Pass --data-root (the NYUD_MT release) and, for the paper's setting, the HRNet
ImageNet weights with `--model-opt pretrained=hrnet_w18_small_model_v2.pth`. `--model mtinet` or
`--model padnet` run the baselines with the same recipe (their official configs use batch 8).

The task losses are weighted 1.44 (semantic) and 1.15 (depth) as in the official configs
(`--weighting fixed`; `--weighting equal` for an unweighted sum). Not reproduced: the official code
picks the best of its last 10 evaluations; the summary here is the mean of the last 10 epochs."""

# MTAN (SPEC 5.2), the recipe of the MTAN paper.
PRESETS["mtan"] = {
    "data": {"name": "nyuv2", "size": "288x384", "tasks": ["semantic", "depth", "normal"]},
    "model": {"name": "mtan", "width": 1.0},
    "weighting": {"name": "equal"},
    "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0},
    "schedule": {"name": "step", "step_size": None, "gamma": 0.5},
    "epochs": 200,
    "batch_size": 2,
    "last_k": 10,
}
NOTES["mtan"] = """MTAN on NYUv2 (13 classes, 288x384) as in the MTAN paper: Adam lr 1e-4 halved at
the midpoint, 200 epochs, batch 2, equal weighting (add --weighting dwa or uncertainty for the
paper's other rows), summary over the last 10 epochs. Pass --data-root."""

def get_preset(name: str) -> dict:
    """A fresh copy of preset ``name``'s nested overrides; UserError lists the valid names."""
    if name not in PRESETS:
        raise unknown_name("preset", name, PRESETS)
    return copy.deepcopy(PRESETS[name])
