"""Every registered model: forward + backward on a tiny input, output shapes, bad input sizes."""

from __future__ import annotations

import math

import pytest
import torch

from densemtl.errors import UserError
from densemtl.models import create_model, get_entry, list_models

NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}
WIDTH = 0.125


def _tasks(name: str) -> dict[str, int]:
    return {"depth": 1} if get_entry(name).single_task else dict(NYUV2)


def _size(name: str) -> int:
    """Smallest multiple of the model's size_multiple that is at least 64."""
    m = get_entry(name).size_multiple
    return m * math.ceil(64 / m)


def test_registry_has_the_segnet_family():
    assert {"mtan", "stan", "single"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_model(name):
    torch.manual_seed(0)
    tasks = _tasks(name)
    model = create_model(name, tasks, width=WIDTH)
    s = _size(name)
    images = torch.rand(2, 3, s, s)
    out = model(images)

    assert set(tasks) <= set(out)
    for key, raw in out.items():
        task = key.split("@")[0]
        assert task in tasks, f"{name}: output {key!r} names no task"
        assert raw.shape[:2] == (2, tasks[task]), f"{name}: {key} has shape {tuple(raw.shape)}"
        if key in tasks:
            assert raw.shape[-2:] == (s, s), f"{name}: {key} is not at input resolution"
        assert torch.isfinite(raw).all()

    sum(raw.square().mean() for raw in out.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: trainable parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", [n for n in list_models() if get_entry(n).size_multiple > 1])
def test_bad_input_size_is_a_user_error(name):
    model = create_model(name, _tasks(name), width=WIDTH)
    s = _size(name)
    with pytest.raises(UserError, match="multiples of"):
        model(torch.rand(1, 3, s + get_entry(name).size_multiple // 2, s))


def test_wrong_channel_count_is_a_user_error():
    model = create_model("mtan", NYUV2, width=WIDTH)
    with pytest.raises(UserError, match="N x 3 x H x W"):
        model(torch.rand(1, 4, 64, 64))


def test_single_task_models_refuse_several_tasks():
    with pytest.raises(UserError, match="single-task"):
        create_model("single", NYUV2, width=WIDTH)
