"""Parameter / FLOP counting and the ``densemtl models`` / ``densemtl info`` commands."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from densemtl.cli import main
from densemtl.models import create_model, list_models
from densemtl.models.info import count_gflops, count_params


def test_count_params_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(5, 2, bias=False))
    assert count_params(model) == (3 * 8 * 9 + 8) + (8 + 8) + 10


def test_count_gflops_by_hand_and_restores_mode():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    model.train()
    macs = 16 * 20 * (8 * 3 * 9 + 4 * 8)  # per output pixel: 3x3x3 per channel, then 1x1x8
    assert count_gflops(model, (16, 20)) == pytest.approx(2 * macs / 1e9)
    assert count_gflops(model, (16, 20), batch=3) == pytest.approx(3 * 2 * macs / 1e9)
    assert all(m.training for m in model.modules())


class _DataDependent(nn.Module):
    """Branches on a tensor's value, which the meta device cannot provide."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x) if x.sum().item() >= 0 else x


def test_count_gflops_runs_data_dependent_models_for_real():
    macs = 8 * 8 * 3 * 2
    assert count_gflops(_DataDependent(), (8, 8)) == pytest.approx(2 * macs / 1e9)
    with torch.device("meta"), pytest.raises(RuntimeError):
        count_gflops(_DataDependent(), (8, 8))


def test_mtan_segnet_compute_matches_the_paper():
    with torch.device("meta"):
        model = create_model("mtan", {"semantic": 13, "depth": 1, "normal": 3})
    assert count_gflops(model, (288, 384)) == pytest.approx(432, rel=0.01)  # SPEC 5.2


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_command_lists_the_registry(capsys):
    code, out, _ = _run(capsys, "models")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    assert any(line.split()[:2] == ["mtan", "mtan"] for line in lines)
    code, out, _ = _run(capsys, "models", "--json")
    assert {e["model"]: e["family"] for e in json.loads(out)}["single"] == "segnet"


def test_info_json_for_nyuv2(capsys):
    code, out, _ = _run(capsys, "info", "mtan", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["params"] == 44_229_073
    assert info["gflops"] == pytest.approx(432, rel=0.01)
    assert info["size"] == [288, 384] and info["tasks"] == {"semantic": 13, "depth": 1, "normal": 3}


def test_info_cityscapes_single_task_defaults_to_the_first_task(capsys):
    code, out, _ = _run(capsys, "info", "single", "--data", "cityscapes", "--width", "0.5",
                        "--size", "64x128", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["tasks"] == {"semantic": 7} and info["size"] == [64, 128] and info["width"] == 0.5
    with torch.device("meta"):
        expected = count_params(create_model("single", {"semantic": 7}, width=0.5))
    assert info["params"] == expected


def test_info_passes_model_options_and_synthetic_has_the_nyuv2_tasks(capsys):
    code, out, _ = _run(capsys, "info", "cross_stitch", "-o", "mixing=mtan", "--json")
    assert code == 0 and json.loads(out)["params"] == 74_941_804
    code, out, _ = _run(capsys, "info", "dense", "-o", "paper_count=false", "--data", "synthetic", "--json")
    info = json.loads(out)
    assert code == 0 and info["options"] == {"paper_count": False}
    assert info["tasks"] == {"semantic": 13, "depth": 1, "normal": 3}


@pytest.mark.parametrize("argv, message", [
    (["info", "mtan", "--size", "100x100"], "multiples of 32"),
    (["info", "nosuchmodel"], "unknown model"),
    (["info", "mtan", "--tasks", "semantic,boundary"], "--tasks"),
    (["info", "mtan", "-o", "mixing"], "KEY=VALUE"),
    (["info", "mtan", "-o", "mixing=full"], "unknown option"),
])
def test_info_bad_input_is_a_clean_error(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err
