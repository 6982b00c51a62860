"""Loss weighting: hand-computed combinations, DWA schedule, resumable state, registry errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from densemtl import weighting as W
from densemtl.errors import UserError
from densemtl.weighting import list_weightings, make_weighting

TASKS = ("semantic", "depth", "normal")


def losses(*values, requires_grad=False):
    return {t: torch.tensor(v, requires_grad=requires_grad) for t, v in zip(TASKS, values)}


def test_registry_lists_the_three_methods():
    assert {"equal", "uncertainty", "dwa"} <= set(list_weightings())


def test_equal_sums_and_passes_gradients():
    w = make_weighting("equal", TASKS)
    ls = losses(1.0, 2.0, 0.5, requires_grad=True)
    total = w.combine(ls)
    assert total.item() == pytest.approx(3.5)
    total.backward()
    assert all(v.grad.item() == 1.0 for v in ls.values())
    assert w.weights() == {"semantic": 1.0, "depth": 1.0, "normal": 1.0}
    assert list(w.parameters()) == []


def test_uncertainty_by_hand_and_learns():
    w = make_weighting("uncertainty", TASKS)
    (s,) = list(w.parameters())
    assert s.tolist() == [-0.5, -0.5, -0.5]
    # L_k / (2 e^-0.5) + (-0.5) / 2 per task
    total = w.combine(losses(1.0, 2.0, 0.5))
    assert total.item() == pytest.approx(3.5 * math.exp(0.5) / 2 - 0.75, rel=1e-6)
    for v in w.weights().values():
        assert v == pytest.approx(1 / (2 * math.exp(-0.5)), rel=1e-6)
    total.backward()
    # d/ds_k = -L_k e^{-s_k} / 2 + 1/2
    want = [-L * math.exp(0.5) / 2 + 0.5 for L in (1.0, 2.0, 0.5)]
    assert s.grad.tolist() == pytest.approx(want, rel=1e-6)
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    opt.step()
    assert w.weights()["depth"] < w.weights()["normal"]  # the task with the larger loss is down-weighted


def dwa_by_hand(prev2, prev1, T=2.0):
    r = [a / b for a, b in zip(prev1, prev2)]
    e = [math.exp(x / T) for x in r]
    return [len(r) * x / sum(e) for x in e]


def test_dwa_schedule_by_hand():
    w = make_weighting("dwa", TASKS)
    assert list(w.weights().values()) == [1.0, 1.0, 1.0]
    w.epoch_end({"semantic": 1.0, "depth": 1.0, "normal": 1.0})
    assert list(w.weights().values()) == [1.0, 1.0, 1.0]  # second epoch still uses 1
    w.epoch_end({"semantic": 0.5, "depth": 1.0, "normal": 2.0})
    # w = (0.5, 1, 2), T = 2: 3 e^{w/2} / (e^.25 + e^.5 + e^1)
    lam = list(w.weights().values())
    assert lam == pytest.approx([0.681659, 0.875268, 1.443073], abs=1e-6)
    assert sum(lam) == pytest.approx(3.0)
    total = w.combine(losses(1.0, 2.0, 0.5))
    assert total.item() == pytest.approx(0.681659 + 2 * 0.875268 + 0.5 * 1.443073, abs=1e-5)
    # fourth epoch uses epochs 2 and 3 only
    w.epoch_end({"semantic": 0.25, "depth": 1.5, "normal": 1.0})
    want = dwa_by_hand([0.5, 1.0, 2.0], [0.25, 1.5, 1.0])
    assert list(w.weights().values()) == pytest.approx(want, abs=1e-12)


def test_dwa_temperature_option():
    w = make_weighting("dwa", ["a", "b"], T=0.5)
    w.epoch_end({"a": 2.0, "b": 1.0})
    w.epoch_end({"a": 1.0, "b": 1.0})
    assert list(w.weights().values()) == pytest.approx(dwa_by_hand([2.0, 1.0], [1.0, 1.0], T=0.5))


def test_dwa_resume_from_state_dict_is_identical():
    epochs = [{"semantic": 3.0 - 0.3 * i, "depth": 1.0 + 0.1 * i, "normal": 0.9 ** i} for i in range(6)]
    straight = make_weighting("dwa", TASKS)
    for e in epochs:
        straight.epoch_end(e)
    first = make_weighting("dwa", TASKS)
    for e in epochs[:3]:
        first.epoch_end(e)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = make_weighting("dwa", TASKS)
    resumed.load_state_dict(state)
    for e in epochs[3:]:
        resumed.epoch_end(e)
    assert resumed.weights() == straight.weights()
    assert set(state) == {"lambdas", "history", "epochs_seen"}


def test_uncertainty_state_dict_round_trip():
    w = make_weighting("uncertainty", TASKS)
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.1, -0.2, 0.3]))
    other = make_weighting("uncertainty", TASKS)
    other.load_state_dict(w.state_dict())
    assert other.weights() == w.weights()


def test_bad_names_options_and_inputs():
    with pytest.raises(UserError, match="unknown weighting 'nosuch'.*dwa, equal, famo, fixed"):
        make_weighting("nosuch", TASKS)
    with pytest.raises(UserError, match=r"unknown option\(s\) \['temp'\].*valid options: T"):
        make_weighting("dwa", TASKS, temp=2)
    with pytest.raises(UserError, match="T .*> 0"):
        make_weighting("dwa", TASKS, T=0)
    with pytest.raises(UserError, match="distinct task names"):
        make_weighting("equal", ["a", "a"])
    w = make_weighting("dwa", TASKS)
    with pytest.raises(ValueError, match="expected the tasks"):
        w.combine({"semantic": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="'depth'.*finite"):
        w.epoch_end({"semantic": 1.0, "depth": 0.0, "normal": 1.0})


def test_new_method_is_one_decorated_class():
    @W.register_weighting("_test_half")
    class Half(W.Weighting):
        def _combine(self, losses):
            return 0.5 * losses.sum()

        def _weights(self):
            return torch.full((len(self.task_names),), 0.5)

    try:
        w = make_weighting("_test_half", ["a", "b"])
        assert w.combine({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}).item() == 3.0
        assert w.weights() == {"a": 0.5, "b": 0.5}
        with pytest.raises(ValueError, match="registered twice"):
            W.register_weighting("_test_half")(Half)
    finally:
        W.base._REGISTRY.pop("_test_half")


def test_fixed_weights_named_tasks_and_keeps_one_for_the_rest():
    w = make_weighting("fixed", TASKS, weights={"semantic": 1.44, "depth": 1.15})
    ls = losses(2.0, 1.0, 0.5, requires_grad=True)
    total = w.combine(ls)
    assert total.item() == pytest.approx(1.44 * 2.0 + 1.15 * 1.0 + 0.5)
    total.backward()
    assert ls["semantic"].grad.item() == pytest.approx(1.44) and ls["normal"].grad.item() == 1.0
    assert w.weights() == pytest.approx({"semantic": 1.44, "depth": 1.15, "normal": 1.0})
    assert list(w.parameters()) == []  # nothing to learn
    w.epoch_end({"semantic": 1.0, "depth": 1.0, "normal": 1.0})
    assert w.weights()["semantic"] == pytest.approx(1.44)  # constant across epochs


@pytest.mark.parametrize("weights, message", [
    ({"semantic": 1.0, "edges": 2.0}, "['edges'] not among the trained tasks"),
    ({"depth": -1.0}, "weight of 'depth' must be a finite number >= 0"),
    ({"depth": "big"}, "weight of 'depth'"),
    ({"depth": float("inf")}, "weight of 'depth'"),
    ("semantic=2", "expected a mapping of task to weight"),
])
def test_fixed_rejects_bad_weights_naming_the_option(weights, message):
    with pytest.raises(UserError, match="weighting option weights") as e:
        make_weighting("fixed", TASKS, weights=weights)
    assert message in str(e.value)


@pytest.mark.parametrize("value, message", [("abc", "expected a finite number"), (True, "expected a finite number"),
                                            (float("nan"), "expected a finite number")])
def test_option_of_the_wrong_type_is_a_user_error(value, message):
    with pytest.raises(UserError, match=f"weighting option T of 'dwa': {message}"):
        make_weighting("dwa", TASKS, T=value)


def test_weightings_command_lists_every_method_with_kind_options_and_paper(capsys):
    from densemtl.cli import main

    assert main(["weightings", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert set(listed) == {n for n in list_weightings() if not n.startswith("_")}
    assert listed["dwa"]["kind"] == "loss" and listed["dwa"]["options"] == {"T": 2.0}
    assert all(d["kind"] in ("loss", "gradient", "representation") for d in listed.values())
    assert main(["weightings"]) == 0 and "uncertainty" in capsys.readouterr().out


def test_docs_page_is_generated_from_the_registry():
    """docs/weightings.md is `densemtl weightings --markdown`: regenerate it when a method changes."""
    from pathlib import Path

    from densemtl.commands.weightings import markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "weightings.md"
    assert page.read_text() == markdown(), "run: densemtl weightings --markdown > docs/weightings.md"


@pytest.mark.parametrize("name", [n for n in list_weightings() if not n.startswith("_")])
def test_docstring_has_the_sections_of_the_docs_page(name):
    import inspect

    from densemtl.weighting import weighting_class

    doc = inspect.getdoc(weighting_class(name))
    first, rest = doc.split("\n", 1)
    assert first.endswith(".") and rest.startswith("\n"), "one summary line, then a blank line"
    heads = [line.split(":")[0] for line in doc.splitlines() if line.split(":")[0] in
             ("Options", "Scale", "AMP", "DDP", "Reference")]
    assert heads == ["Options", "Scale", "AMP", "DDP", "Reference"], heads
