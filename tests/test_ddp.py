"""Data-parallel training on CPU (gloo): 2 processes against 1 process with the same global batch.

The reference trains MTAN (fused path, uncertainty weighting) for 3 epochs in this process with
batch 4. The DDP run trains 2 processes with batch 2 each for 2 epochs, then resumes to 3
epochs from rank 0's checkpoint. BatchNorm is kept in eval mode in both runs (CPU has no
SyncBatchNorm), and every target pixel is valid, so the mean of the two local losses is the
global loss: the loss trajectory, the final weights (model and uncertainty log-variances) and
the validation metrics (meters merged over the ranks) must match the single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from densemtl.engine import distributed
from densemtl.engine.checkpoint import load_checkpoint
from densemtl.engine.config import config_from_dict
from densemtl.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


def write_npy_dataset(root: Path, train: int = 8, val: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A tiny dataset in MTAN's NYUv2 layout whose every pixel is valid for every task."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for kind in ("image", "label", "depth", "normal"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            normal = rng.normal(size=(size, size, 3)).astype(np.float32)
            normal /= np.linalg.norm(normal, axis=2, keepdims=True)
            arrays = {
                "image": rng.random((size, size, 3), dtype=np.float32),
                "label": rng.integers(0, 13, (size, size)).astype(np.float32),
                "depth": (0.5 + 4 * rng.random((size, size, 1))).astype(np.float32),
                "normal": normal,
            }
            for kind, array in arrays.items():
                np.save(root / split / kind / f"{i}.npy", array)
    return root


def make_config(root: Path, out: Path, batch_size: int, epochs: int):
    return config_from_dict({
        "data": {"name": "nyuv2", "root": str(root), "size": "32x32"},
        "model": {"name": "mtan", "width": 0.125},
        "weighting": {"name": "uncertainty"},
        "optim": {"name": "adam", "lr": 1e-3},
        "schedule": {"name": "none"},  # a step schedule would depend on the epoch count before resuming
        "epochs": epochs, "batch_size": batch_size, "out": str(out),
    })


def freeze_batchnorm(model: nn.Module, root: Path) -> None:
    """BatchNorm layers stay in eval mode (running statistics) even when the trainer calls
    ``model.train()``: the comparison's stand-in for SyncBatchNorm, which torch has on GPUs only.
    The statistics come from one training-mode pass over the train images (the same in every
    process), and eps = 1 caps each layer's gain at 1: with eps = 1e-5, channels whose
    calibration variance is ~0 amplify rounding differences (1e-7) into percent-level loss
    differences within a few steps, which would hide what this test checks."""
    images = torch.stack([torch.from_numpy(np.load(f)).permute(2, 0, 1)
                          for f in sorted((root / "train" / "image").glob("*.npy"))])
    for m in model.modules():
        if not isinstance(m, nn.BatchNorm2d):
            continue
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the statistics of this one pass
    model.train()
    with torch.no_grad():
        model(images)
    keep_frozen(model)


def keep_frozen(model: nn.Module) -> None:
    """Eval mode with eps = 1 for every BatchNorm, whatever ``model.train()`` says later."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1.0  # not part of the state_dict: set again after every (re)construction
            m.eval()
            m.train = types.MethodType(lambda self, mode=True: self, m)


def train_run(config, resume_to: int | None = None) -> Trainer:
    trainer = Trainer(config, progress=False, log=lambda msg: None)
    freeze_batchnorm(trainer.model, Path(config.data.root))
    trainer.fit()
    if resume_to is not None:
        trainer = Trainer.resume(config.out, {"epochs": resume_to}, progress=False, log=lambda msg: None)
        keep_frozen(trainer.model)  # the checkpoint holds the calibrated statistics
        trainer.fit()
    return trainer


def _worker(rank: int, port: int, root: str, out: str, report: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    try:
        trainer = train_run(make_config(Path(root), Path(out), batch_size=2, epochs=2), resume_to=3)
        torch.save({"rank": distributed.rank(), "is_main": trainer.is_main,
                    "model": trainer.model.state_dict(), "weighting": trainer.weighting.state_dict(),
                    "history": trainer.history}, Path(report) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_npy_dataset(tmp_path_factory.mktemp("ddp") / "nyuv2")


def test_two_processes_match_one_process_with_the_same_global_batch(data, tmp_path):
    single = train_run(make_config(data, tmp_path / "single", batch_size=4, epochs=3))

    report = tmp_path / "report"
    report.mkdir()
    mp.start_processes(_worker, args=(free_port(), str(data), str(tmp_path / "ddp"), str(report)),
                       nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(report / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["is_main"] for r in ranks] == [True, False]

    # every rank holds the same weights and weighting state (DDP kept them in step)
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    for key, value in ranks[0]["weighting"].items():
        assert torch.equal(value, ranks[1]["weighting"][key]), key

    ddp = ranks[0]
    assert [h["epoch"] for h in ddp["history"]] == [1, 2, 3]
    for h_ddp, h_one in zip(ddp["history"], single.history):
        for task, loss in h_one["train_loss"].items():
            assert h_ddp["train_loss"][task] == pytest.approx(loss, rel=1e-5), (h_one["epoch"], task)
        for task, metrics in h_one["val"].items():  # meters merged over the two ranks' shards
            for name, value in metrics.items():
                assert h_ddp["val"][task][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (task, name)
        for task, weight in h_one["weights"].items():
            assert h_ddp["weights"][task] == pytest.approx(weight, rel=1e-5)
        for task, loss in h_one["val_loss"].items():
            assert h_ddp["val_loss"][task] == pytest.approx(loss, rel=1e-5)

    reference = single.model.state_dict()
    for key, value in ddp["model"].items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-5, msg=key)
    log_vars = single.weighting.state_dict()
    assert any(not torch.equal(v, torch.full_like(v, -0.5)) for v in log_vars.values())  # it learned
    for key, value in ddp["weighting"].items():
        torch.testing.assert_close(value, log_vars[key], rtol=1e-4, atol=1e-6, msg=key)

    # only rank 0 wrote: one metrics line per epoch (not one per rank), one finished run
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints" / "final.pt")["epoch"] == 3


def test_torchrun_cli(data, tmp_path):
    """The documented entry point: ``torchrun --nproc_per_node=2 -m densemtl train ...``."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           "-m", "densemtl", "train", "--data", "nyuv2", "--data-root", str(data), "--size", "32x32",
           "--width", "0.125", "--batch-size", "2", "--epochs", "1", "--weighting", "dwa",
           "--out", str(run), "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trivial predictors") == 1  # the summary is printed by rank 0 only
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "summary.json").is_file() and (run / "pictures" / "epoch_001.png").is_file()


def test_single_process_helpers_are_no_ops():
    assert distributed.init_from_env("cpu") == "cpu" and not distributed.is_distributed()
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(distributed.all_reduce_sum(values), values)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    model = nn.Linear(2, 2)
    assert distributed.data_parallel(model, nn.Module(), torch.device("cpu")) is model
    assert list(distributed.ShardSampler(range(5))) == [0, 1, 2, 3, 4]
