"""Typed config: defaults, YAML and flag layering, value parsing, and errors that name the key."""

from __future__ import annotations

import argparse

import pytest

from densemtl.engine import config as C
from densemtl.errors import UserError


def parse_flags(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    C.add_config_arguments(p)
    return p.parse_args(list(argv))


def test_defaults_are_the_cpu_demo():
    cfg = C.config_from_dict({})
    assert cfg == C.TrainConfig()
    assert (cfg.data.name, cfg.model.name, cfg.weighting.name) == ("synthetic", "mtan", "equal")
    assert (cfg.optim.name, cfg.schedule.name, cfg.device, cfg.convention) == ("adam", "step", "cpu", "dataset")


@pytest.mark.parametrize("value, expected", [("96x128", (96, 128)), ("64X96", (64, 96)), ([32, 64], (32, 64)),
                                             (32, (32, 32)), ("48", (48, 48))])
def test_size_forms(value, expected):
    assert C.parse_size(value) == expected


def test_yaml_scalars_are_coerced(tmp_path):
    # YAML 1.1 reads 1e-4 as a string; the float field accepts it.
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1e-4, name: sgd}\ndata:\n  tasks: semantic,depth\n  size: 64x96\n"
                    "  augment: yes\nepochs: 3\n")
    cfg = C.config_from_args(parse_flags("--config", str(path)))
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.optim.name == "sgd"
    assert cfg.data.tasks == ["semantic", "depth"] and cfg.data.size == (64, 96) and cfg.data.augment is True
    assert cfg.epochs == 3 and cfg.batch_size == C.TrainConfig().batch_size


def test_flags_override_yaml_and_only_given_flags_count(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nbatch_size: 4\nweighting: {name: dwa, options: {T: 3.0}}\n")
    cfg = C.config_from_args(parse_flags("--config", str(path), "--epochs", "5", "--weighting-opt", "T=1.5",
                                         "--no-augment", "--model-opt", "mode=add"))
    assert cfg.epochs == 5  # flag wins
    assert cfg.batch_size == 4  # YAML kept: --batch-size was not given
    assert cfg.weighting.name == "dwa" and cfg.weighting.options == {"T": 1.5}
    assert cfg.model.options == {"mode": "add"}
    assert cfg.data.augment is False


def test_preset_sits_under_yaml_and_flags(tmp_path, monkeypatch):
    presets = {"recipe": {"optim": {"lr": 1e-4}, "epochs": 200, "batch_size": 2}}
    monkeypatch.setattr(C, "preset_overrides", lambda name: presets[name])
    path = tmp_path / "c.yaml"
    path.write_text("preset: recipe\nepochs: 10\n")
    cfg = C.config_from_args(parse_flags("--config", str(path), "--batch-size", "6"))
    assert (cfg.preset, cfg.optim.lr, cfg.epochs, cfg.batch_size) == ("recipe", 1e-4, 10, 6)


def test_another_method_name_drops_the_presets_options():
    """--preset atinet (DWA, T=2) --weighting equal: the DWA option must not reach 'equal';
    keeping the method keeps its options, and options given with the new name stay."""
    cfg = C.config_from_args(parse_flags("--preset", "atinet", "--weighting", "equal"))
    assert (cfg.weighting.name, cfg.weighting.options) == ("equal", {})
    cfg = C.config_from_args(parse_flags("--preset", "atinet", "--weighting-opt", "T=3"))
    assert (cfg.weighting.name, cfg.weighting.options) == ("dwa", {"T": 3})
    cfg = C.config_from_args(parse_flags("--preset", "sca_mtl", "--model", "mtinet", "--model-opt", "x=1"))
    assert cfg.model.options == {"x": 1}
    cfg = C.config_from_args(parse_flags("--preset", "sca_mtl", "--weighting", "fixed",
                                         "--weighting-opt", "weights={semantic: 2}"))
    assert cfg.weighting.options == {"weights": {"semantic": 2}}  # an option's value is replaced whole
    cfg = C.config_from_args(parse_flags("--preset", "sca_mtl"))
    assert cfg.weighting.options == {"weights": {"semantic": 1.44, "depth": 1.15}}  # official configs


def test_round_trip_through_yaml(tmp_path):
    cfg = C.config_from_dict({"data": {"size": "64x96", "tasks": ["depth"], "root": "/x"},
                              "model": {"options": {"a": [1, 2]}}, "optim": {"lr": 0.5}, "seed": 7})
    C.save_yaml(cfg, tmp_path / "config.yaml")
    assert C.load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("values, fragments", [
    ({"optim": {"lrr": 1}}, ["optim.lrr", "did you mean 'lr'"]),
    ({"epoch": 3}, ["'epoch'", "did you mean 'epochs'"]),
    ({"epochs": "many"}, ["epochs (--epochs)", "integer", "'many'"]),
    ({"epochs": 0}, ["epochs (--epochs)", "positive"]),
    ({"optim": {"lr": "fast"}}, ["optim.lr (--lr)", "number"]),
    ({"optim": {"name": "adamw"}}, ["optim.name (--optimizer)", "adam, sgd", "did you mean 'adam'"]),
    ({"schedule": {"name": "cosine"}}, ["schedule.name (--schedule)", "step, poly, none"]),
    ({"convention": "coco"}, ["convention (--convention)", "dataset, mtan"]),
    ({"data": {"size": "big"}}, ["data.size (--size)", "HxW"]),
    ({"data": {"size": "0x32"}}, ["data.size", "positive"]),
    ({"data": {"augment": "maybe"}}, ["data.augment", "true or false"]),
    ({"data": {"tasks": []}}, ["data.tasks", "non-empty list"]),
    ({"model": {"options": [1]}}, ["model.options", "mapping"]),
    ({"model": "mtan"}, ["model", "mapping"]),
    ({"device": "tpu"}, ["device (--device)", "cuda"]),
    ({"num_workers": -1}, ["num_workers", "non-negative"]),
])
def test_bad_values_name_the_key(values, fragments):
    with pytest.raises(UserError) as e:
        C.config_from_dict(values)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_bad_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.yaml"
    with pytest.raises(UserError, match="none.yaml"):
        C.config_from_args(parse_flags("--config", str(missing)))
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: {lr: [1,\n")
    with pytest.raises(UserError, match="broken.yaml.*not valid YAML"):
        C.read_yaml(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="list.yaml.*mapping"):
        C.read_yaml(listy)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim: {learning_rate: 0.1}\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown config key 'optim.learning_rate'"):
        C.config_from_args(parse_flags("--config", str(typo)))


def test_bad_option_flag():
    with pytest.raises(UserError, match="model.options.*KEY=VALUE"):
        C.flag_overrides(parse_flags("--model-opt", "novalue"))


def test_cli_reports_config_errors_without_traceback(capsys):
    from densemtl.cli import main

    assert main(["train", "--lr", "abc"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr (--lr): expected a number, got 'abc'" in err and "Traceback" not in err
