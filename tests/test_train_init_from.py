"""End-to-end ``densemtl train --init-from``: an MTAN run warm-starts ATI-Net through the CLI; a
checkpoint of another family, a missing checkpoint and ``--resume`` with ``--init-from`` are refused."""

from __future__ import annotations

import pytest
import torch
import yaml

from densemtl.cli import main
from densemtl.data.synthetic import generate_dataset
from densemtl.engine import trainer as trainer_module
from densemtl.engine.checkpoint import load_checkpoint
from densemtl.models import create_model

WIDTH = 0.0625
NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}


@pytest.fixture(scope="module", autouse=True)
def no_curves():
    """Skip drawing curves.png (most of a tiny run's time, and nothing this file checks)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "plot_curves", lambda history, path: path)
        yield


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """8 train / 4 val procedural scenes at 64x64 (SegNet needs sides divisible by 32)."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, train=8, val=4, size=(64, 64), seed=4)
    return root


def train(scenes, *argv) -> int:
    return main(["train", "--data-root", str(scenes), "--size", "64x64", "--width", str(WIDTH),
                 "--epochs", "1", "--batch-size", "4", "--no-progress", *argv])


@pytest.fixture(scope="module")
def mtan_run(scenes, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mtan"
    assert train(scenes, "--model", "mtan", "--out", str(run)) == 0
    return run


def test_atinet_starts_from_the_mtan_run(scenes, mtan_run, tmp_path, monkeypatch, capsys):
    initial: dict[str, torch.Tensor] = {}
    real_train_epoch = trainer_module.Trainer.train_epoch

    def record_initial_state(self, epoch):  # the weights the first training step starts from
        if epoch == 1:
            initial.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return real_train_epoch(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", record_initial_state)
    run = tmp_path / "ati"
    assert train(scenes, "--model", "atinet", "--init-from", str(mtan_run), "--out", str(run), "--seed", "0") == 0

    mtan = load_checkpoint(mtan_run)["model"]  # the run folder resolves to its final.pt
    torch.manual_seed(0)  # what the trainer builds for seed 0 before the warm start
    fresh = create_model("atinet", NYUV2, width=WIDTH).state_dict()
    assert set(mtan) < set(initial) == set(fresh)
    changed = [k for k in mtan if mtan[k].is_floating_point() and not torch.equal(mtan[k], fresh[k])]
    assert len(changed) > len(mtan) // 2  # training moved the MTAN weights away from any fresh init
    for name, tensor in mtan.items():
        assert torch.equal(initial[name], tensor), name
    branch = set(initial) - set(mtan)
    assert branch and all(k.startswith("bottleneck.") for k in branch)
    for name in branch:  # ATI-Net's own branch keeps its seeded initialisation
        assert torch.equal(initial[name], fresh[name]), name

    err = capsys.readouterr().err
    assert f"loaded {len(mtan)} of {len(fresh)} tensors of the model" in err
    assert f"kept fresh (not in the checkpoint): {len(branch)}" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["init_from"] == str(mtan_run)


def test_single_task_checkpoint_is_refused(scenes, tmp_path, capsys):
    single = tmp_path / "single"
    assert train(scenes, "--model", "single", "--tasks", "semantic", "--out", str(single)) == 0
    capsys.readouterr()
    run = tmp_path / "ati"
    assert train(scenes, "--model", "atinet", "--init-from", str(single), "--out", str(run)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "--init-from" in err and "'single'" in err and "family 'mtan'" in err
    assert "warm starts work only within one architecture family" in err
    assert not run.exists()  # refused before the run folder is made


def test_missing_checkpoint_is_refused(scenes, tmp_path, capsys):
    missing, run = tmp_path / "nope.pt", tmp_path / "ati"
    assert train(scenes, "--model", "atinet", "--init-from", str(missing), "--out", str(run)) == 2
    err = capsys.readouterr().err
    assert f"--init-from (init_from): checkpoint {missing} does not exist" in err and "Traceback" not in err
    assert not run.exists()


def test_resume_refuses_init_from(mtan_run, capsys):
    assert main(["train", "--resume", str(mtan_run), "--init-from", str(mtan_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--init-from cannot be used with --resume" in err
