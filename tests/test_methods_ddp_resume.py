"""Every multi-task optimisation method is exact under DDP and under kill + resume.

DDP: 2 gloo processes, each with half of a fixed global batch, take 3 steps of every method on a
tiny MTAN; a single process takes the same 3 steps on the whole batch. BatchNorm runs in eval
mode (CPU has no SyncBatchNorm), every target pixel is valid, so the global loss is the mean of
the local losses and the methods must move the weights identically: parameter methods see the
all-reduced Jacobian of the global batch, representation methods the global Gramian, loss
methods the global loss values, random methods the same draws on every rank.

Resume: for every method with state (buffers, parameters, a re-forward) or randomness, a run
stopped after epoch 1 and resumed from its checkpoint ends with the same weights, weighting
state and loss history as the uninterrupted 2-epoch run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from densemtl.engine import distributed, speed
from densemtl.engine.config import config_from_dict
from densemtl.engine.mtl_step import make_step, step_generator
from densemtl.engine import trainer as trainer_module
from densemtl.engine.trainer import Trainer
from densemtl.models import create_model
from densemtl.tasks import make_tasks, task_channels
from densemtl.weighting import StepContext, list_weightings, make_weighting, weighting_class
from mtl_helpers import synthetic_batch
from test_ddp import free_port, write_npy_dataset

TASKS = ["semantic", "depth", "normal"]
METHODS = [m for m in list_weightings() if not m.startswith("_")]
WORLD = 2
STEPS = 3


def _scope(method):
    cls = weighting_class(method)
    return None if cls.kind == "loss" else cls.default_scope


def calibrate_and_freeze_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """BatchNorm statistics of one pass over the global batch (the same in every process), then
    eval mode with eps = 1 (as tests/test_ddp.py: caps each layer's gain, so float noise is not
    amplified): the stand-in for SyncBatchNorm, which torch has on GPUs only."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        model(images)
    for m in bns:
        m.eps = 1.0
        m.eval()


def run_method(method: str, images_slice: slice) -> dict:
    """STEPS steps of ``method`` on a tiny MTAN (BatchNorm frozen) on this process's part of the
    global batch; under a process group the model is wrapped in DDP as the trainer does."""
    torch.manual_seed(0)
    tasks = make_tasks(TASKS, num_classes=13)
    model = create_model("mtan", task_channels(tasks), width=0.0625).train()
    full = synthetic_batch(4, 32, seed=5)
    calibrate_and_freeze_batchnorm(model, full["image"])
    weighting = make_weighting(method, TASKS)
    train_model = distributed.data_parallel(model, weighting, torch.device("cpu"))
    # SGD: the step is the gradient itself (Adam would turn float noise in near-zero gradients
    # into full-size steps, hiding what this test checks)
    optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.02)
    step = make_step(model=model, train_model=train_model, weighting=weighting, optimizer=optimizer,
                     scaler=speed.grad_scaler(torch.device("cpu"), "none"), tasks=tasks, device=torch.device("cpu"),
                     amp="none", channels_last=False, scope=_scope(method), model_name="mtan")
    local = {k: v[images_slice] for k, v in full.items()}
    losses = []
    for i in range(1, STEPS + 1):
        out = step(local["image"], local, StepContext(step=i, epoch=1, generator=step_generator(0, i)),
                   lambda values: None)
        losses.append(distributed.all_reduce_sum(out["losses"]) / distributed.world_size())
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "weighting": {k: v.clone() for k, v in weighting.state_dict().items()},
            "losses": torch.stack(losses)}


def _worker(rank: int, port: int, report: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        results = {m: run_method(m, slice(2 * rank, 2 * rank + 2)) for m in METHODS}
        torch.save(results, Path(report) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    report = tmp_path_factory.mktemp("ddp_methods")
    mp.start_processes(_worker, args=(free_port(), str(report)), nprocs=WORLD, start_method="spawn")
    return [torch.load(report / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_process(method, ddp_results):
    single = run_method(method, slice(0, 4))
    ranks = [r[method] for r in ddp_results]
    for key, value in ranks[0]["model"].items():  # the ranks agree exactly ...
        assert torch.equal(value, ranks[1]["model"][key]), (method, key)
    torch.testing.assert_close(ranks[0]["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    moved = False
    for key, value in ranks[0]["model"].items():  # ... and with the single process
        torch.testing.assert_close(value, single["model"][key], rtol=1e-4, atol=2e-6, msg=f"{method} {key}")
    for key, value in ranks[0]["weighting"].items():
        torch.testing.assert_close(value.double(), single["weighting"][key].double(), rtol=1e-4, atol=1e-6,
                                   msg=f"{method} {key}")
    torch.manual_seed(0)
    fresh = create_model("mtan", {"semantic": 13, "depth": 1, "normal": 3}, width=0.0625).state_dict()
    moved = any(not torch.equal(v, fresh[k]) for k, v in single["model"].items() if v.is_floating_point())
    assert moved, method


# ----------------------------------------------------------------------------- resume

def stateful_or_random(method: str) -> bool:
    """Methods whose resume is not trivially exact: state (buffers, parameters, a re-forward)
    or random draws (``random = True``)."""
    w = make_weighting(method, TASKS)
    return bool(w.state_dict()) or bool(list(w.parameters())) or w.needs_reforward or w.random


RESUMABLE = [m for m in METHODS if stateful_or_random(m)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_npy_dataset(tmp_path_factory.mktemp("resume") / "nyuv2")


def config(root: Path, out: Path, method: str, epochs: int):
    return config_from_dict({
        "data": {"name": "nyuv2", "root": str(root), "size": "32x32"},
        "model": {"name": "mtan", "width": 0.0625},
        "weighting": {"name": method},
        "optim": {"name": "adam", "lr": 1e-3}, "schedule": {"name": "none"},
        "epochs": epochs, "batch_size": 4, "out": str(out),
    })


def test_resumable_methods_are_listed():
    assert {"uncertainty", "dwa"} <= set(RESUMABLE)


@pytest.mark.parametrize("method", RESUMABLE)
def test_stop_and_resume_equals_the_uninterrupted_run(method, data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "plot_curves", lambda *a, **k: None)  # ~1 s a run; not tested here
    quiet = dict(progress=False, log=lambda msg: None)
    whole = Trainer(config(data, tmp_path / "whole", method, 2), **quiet)
    whole.fit()
    Trainer(config(data, tmp_path / "part", method, 1), **quiet).fit()  # "killed" after epoch 1
    resumed = Trainer.resume(tmp_path / "part", {"epochs": 2}, **quiet)
    resumed.fit()
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), (method, key)
    for key, value in whole.weighting.state_dict().items():
        assert torch.equal(value, resumed.weighting.state_dict()[key]), (method, key)
    assert [h["train_loss"] for h in whole.history] == [h["train_loss"] for h in resumed.history]
    assert [h.get("weights") for h in whole.history] == [h.get("weights") for h in resumed.history]
