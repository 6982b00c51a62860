"""Typed training configuration: dataclasses, read from YAML and/or command-line flags.

Precedence, lowest first: the dataclass defaults (the CPU demo run), a named preset
(:mod:`densemtl.presets`), a YAML file (``--config FILE``), then the flags given explicitly.
Every layer is a nested dict of overrides; :func:`config_from_dict` checks every key and value
and raises :class:`~densemtl.errors.UserError` naming the key and what it expected.

YAML layout (every key optional)::

    data: {name: synthetic, root: null, size: 96x128, tasks: [semantic, depth, normal],
           augment: false, num_classes: null}
    model: {name: mtan, width: 0.125, options: {}}
    weighting: {name: equal, options: {}}
    optim: {name: adam, lr: 0.001, weight_decay: 0.0, momentum: 0.9}
    schedule: {name: step, step_size: null, gamma: 0.5, power: 0.9}
    epochs: 5
    batch_size: 8
    ...
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("step", "poly", "none")
CONVENTIONS = ("dataset", "mtan")
AMP_MODES = ("none", "bf16", "fp16")  # autocast precision of the forward pass (engine/speed.py)
# where gradient-level methods read per-task gradients (models/scope.py, engine/mtl_step.py)
SCOPES = ("all", "shared", "representation")
DEVICE_PATTERN = r"cpu|cuda(:\d+)?|mps"


@dataclass
class DataConfig:
    """Which dataset, where, at what size, and which tasks."""

    name: str = "synthetic"  # any registered dataset: synthetic | nyuv2 | cityscapes | ...
    root: str | None = None  # None: the synthetic scenes in the cache (required for other data)
    size: tuple[int, int] | None = None  # training H x W; None: the dataset's default size
    tasks: list[str] | None = None  # None: every task the dataset provides
    augment: bool = False  # random scale-crop + flip (SPEC 1.4)
    num_classes: int | None = None  # None: the dataset's default (CityScapes: 2, 7 or 19)


@dataclass
class ModelConfig:
    name: str = "mtan"
    width: float = 0.125  # channel multiplier; 1.0 is the paper's size
    options: dict[str, Any] = field(default_factory=dict)  # model-specific, see `densemtl models`


@dataclass
class WeightingConfig:
    name: str = "equal"  # any registered method (`densemtl weightings`)
    options: dict[str, Any] = field(default_factory=dict)  # e.g. {T: 2.0} for dwa, {c: 0.4} for cagrad
    # gradient-level methods: all (every parameter but the heads) | shared (parameters no task
    # owns) | representation (the features the heads read); None: the method's official default,
    # which the run's config.yaml records. Loss-level methods take none.
    scope: str | None = None


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only


@dataclass
class ScheduleConfig:
    name: str = "step"  # step | poly | none
    step_size: int | None = None  # step: epochs between decays; None = half the epochs, rounded up (MTAN)
    gamma: float = 0.5  # step: lr factor at each decay
    power: float = 0.9  # poly: lr = base * (1 - epoch / epochs) ** power


@dataclass
class TrainConfig:
    """Everything a training run needs; written to ``config.yaml`` in the run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 5
    batch_size: int = 8
    eval_batch_size: int | None = None  # None: same as batch_size (the mtan convention uses 2)
    seed: int = 0
    convention: str = "dataset"  # dataset | mtan (per-batch means, as the official MTAN code)
    last_k: int = 2  # the summary reports the mean of the last k epochs' val metrics
    out: str | None = None  # run folder; None: runs/<data>-<model>-<weighting>-<time>
    device: str = "cpu"  # cpu | cuda | cuda:N
    num_workers: int = 0  # data-loading worker processes
    # speed options (engine/speed.py); none changes the model's mathematics
    amp: str = "none"  # none | bf16 | fp16: autocast forward pass; losses and metrics stay float32
    channels_last: bool = True  # NHWC memory format: faster convolutions (oneDNN, cuDNN)
    compile: bool = False  # torch.compile the model (on CPU it needs a C++ compiler)
    sync_bn: bool = False  # DDP on CUDA (torchrun): BatchNorm statistics over all processes
    preset: str | None = None  # named overrides from densemtl.presets, applied under YAML/flags
    # warm start of a new run: a checkpoint file or run folder of the same architecture family
    # (engine/warmstart.py); ignored on resume, which restores the run's own checkpoint
    init_from: str | None = None


# ----------------------------------------------------------------------------- value checking

def _close(name: str, valid) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _name(key: str) -> str:
    """A config key as error messages show it: ``optim.lr (--lr)``."""
    flag = next((f for f, k, _ in _FLAGS if k == key), None)
    return f"{key} ({flag})" if flag else key


def parse_size(value: Any, key: str = "data.size") -> tuple[int, int]:
    """``"96x128"``, ``[96, 128]`` or ``96`` (square) -> ``(96, 128)``."""
    if isinstance(value, bool):
        raise UserError(f"{_name(key)}: expected a size HxW such as 96x128, got {value!r}")
    if isinstance(value, int):
        h = w = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value) or re.fullmatch(r"\s*(\d+)\s*", value)
        if not m:
            raise UserError(f"{_name(key)}: expected a size HxW such as 96x128, got {value!r}")
        h, w = int(m.group(1)), int(m.group(m.lastindex))
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        h, w = value
    else:
        raise UserError(f"{_name(key)}: expected a size HxW such as 96x128, got {value!r}")
    if h <= 0 or w <= 0:
        raise UserError(f"{_name(key)}: height and width must be positive, got {h}x{w}")
    return int(h), int(w)


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one config value against its annotated type; UserError names ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if key == "data.size":
        return parse_size(value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise UserError(f"{_name(key)}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        raise UserError(f"{_name(key)}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{_name(key)}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str) and value:
            return value
        raise UserError(f"{_name(key)}: expected a non-empty string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
            raise UserError(f"{_name(key)}: expected a non-empty list of names (or 'a,b,c'), got {value!r}")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UserError(f"{_name(key)}: expected a mapping of option names to values, got {value!r}")
        return dict(value)
    raise AssertionError(f"unhandled config type {tp} for {key}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a (possibly partial) dict, checking every key."""
    if not isinstance(values, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(
                f"unknown config key {prefix + str(key)!r}{_close(str(key), names)}; "
                f"expected one of: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"{_name(key)}: expected one of {', '.join(choices)}, got {value!r}{_close(value, choices)}")


def check_positive(label: str, value, allow_zero: bool = False) -> None:
    """UserError naming ``label`` (a key or a flag) unless ``value`` is None or > 0 (>= 0)."""
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"{label}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def _check_positive(key: str, value, allow_zero: bool = False) -> None:
    check_positive(_name(key), value, allow_zero)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and choice checks that need no registry (model/data/weighting names are checked
    where they are built, by their registries, which list the valid names)."""
    _check_choice("optim.name", cfg.optim.name, OPTIMIZERS)
    _check_choice("schedule.name", cfg.schedule.name, SCHEDULES)
    _check_choice("convention", cfg.convention, CONVENTIONS)
    for key in ("epochs", "batch_size", "eval_batch_size", "last_k"):
        _check_positive(key, getattr(cfg, key))
    _check_positive("num_workers", cfg.num_workers, allow_zero=True)
    _check_positive("model.width", cfg.model.width)
    _check_positive("optim.lr", cfg.optim.lr)
    _check_positive("optim.weight_decay", cfg.optim.weight_decay, allow_zero=True)
    _check_positive("optim.momentum", cfg.optim.momentum, allow_zero=True)
    _check_positive("schedule.step_size", cfg.schedule.step_size)
    _check_positive("schedule.gamma", cfg.schedule.gamma)
    _check_positive("schedule.power", cfg.schedule.power)
    _check_positive("data.num_classes", cfg.data.num_classes)
    if not re.fullmatch(DEVICE_PATTERN, cfg.device):
        raise UserError(f"{_name('device')}: expected cpu, cuda or cuda:N, got {cfg.device!r}")
    _check_choice("amp", cfg.amp, AMP_MODES)
    if cfg.weighting.scope is not None:
        _check_choice("weighting.scope", cfg.weighting.scope, SCOPES)
    return cfg


# ----------------------------------------------------------------------------- dict layers

def to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (YAML/JSON friendly: size as 'HxW')."""
    d = dataclasses.asdict(cfg)
    if d["data"]["size"] is not None:
        d["data"]["size"] = format_size(d["data"]["size"])
    return d


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge, key by key. An ``options`` dict merges option by option, each
    option's value replaced whole; a section whose ``name`` the override changes (another model
    or weighting) drops the options of the old name."""
    out = copy.deepcopy(base)
    if "name" in override and override["name"] != out.get("name") and isinstance(out.get("options"), dict):
        out["options"] = {}
    for key, value in override.items():
        if key == "options" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_from_dict(values: dict) -> TrainConfig:
    """A validated :class:`TrainConfig` from a nested dict of overrides over the defaults."""
    return validate(_build(TrainConfig, merge(to_dict(TrainConfig()), values), ""))


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file (a mapping); UserError names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of keys to values at the top level")
    return data


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a config file (e.g. a run folder's ``config.yaml``)."""
    try:
        return config_from_dict(read_yaml(path))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def preset_overrides(name: str) -> dict:
    """The nested overrides of a named preset (from :mod:`densemtl.presets`)."""
    try:
        from .. import presets
    except ModuleNotFoundError as e:
        if e.name != "densemtl.presets":
            raise
        raise UserError(f"preset {name!r} requested, but this installation has no presets") from None
    return presets.get_preset(name)


def resolve(yaml_values: dict | None = None, flag_values: dict | None = None) -> TrainConfig:
    """Layer defaults < preset < YAML < flags and validate. The preset named by a flag wins over
    the one named in the YAML file."""
    yaml_values = yaml_values or {}
    flag_values = flag_values or {}
    preset = flag_values.get("preset", yaml_values.get("preset"))
    layers: dict = {}
    if preset is not None:
        layers = merge(preset_overrides(_coerce(preset, str, "preset")), {"preset": preset})
    layers = merge(merge(layers, yaml_values), flag_values)
    return config_from_dict(layers)


# ----------------------------------------------------------------------------- command line

# (flag, dotted config key, argparse kwargs). Defaults are None = "not given" so that only the
# flags a user typed override the YAML file / preset / run being resumed. Help texts without a
# "(default" get the dataclass default appended, so the help never drifts from the code.
_FLAGS: tuple[tuple[str, str, dict], ...] = (
    ("--data", "data.name", dict(metavar="NAME", help="dataset: synthetic, nyuv2, cityscapes, nyud, ...")),
    ("--data-root", "data.root", dict(metavar="DIR", help="dataset folder (default for synthetic: the cache)")),
    ("--size", "data.size", dict(metavar="HxW", help="training size, e.g. 96x128 (default: the dataset's)")),
    ("--tasks", "data.tasks", dict(metavar="A,B", help="comma-separated tasks (default: all of the dataset's)")),
    ("--augment", "data.augment", dict(action=argparse.BooleanOptionalAction,
                                       help="random scale-crop and flip")),
    ("--num-classes", "data.num_classes", dict(
        metavar="N", help="segmentation classes (default: the dataset's; CityScapes: 2, 7 or 19)")),
    ("--model", "model.name", dict(metavar="NAME", help="model (see `densemtl models`)")),
    ("--width", "model.width", dict(metavar="W", help="channel multiplier (1.0 = paper size)")),
    ("--model-opt", "model.options", dict(metavar="KEY=VALUE", action="append",
                                          help="model option (repeatable; see `densemtl models --json`)")),
    ("--weighting", "weighting.name", dict(metavar="NAME", help="multi-task optimisation method (see `densemtl weightings`)")),
    ("--weighting-opt", "weighting.options", dict(metavar="KEY=VALUE", action="append",
                                                  help="weighting option, e.g. T=2 for dwa or "
                                                       "'weights={semantic: 1.44, depth: 1.15}' for fixed (repeatable)")),
    ("--scope", "weighting.scope", dict(
        metavar="SCOPE", help="where a gradient-level method reads per-task gradients: all (every parameter "
                              "but the heads), shared (only parameters no task owns) or representation "
                              "(the features the heads read) (default: the method's official choice)")),
    ("--optimizer", "optim.name", dict(metavar="NAME", help="adam or sgd")),
    ("--lr", "optim.lr", dict(metavar="LR", help="learning rate")),
    ("--weight-decay", "optim.weight_decay", dict(metavar="WD", help="weight decay")),
    ("--momentum", "optim.momentum", dict(metavar="M", help="SGD momentum")),
    ("--schedule", "schedule.name", dict(metavar="NAME", help="learning-rate schedule: step, poly or none")),
    ("--step-size", "schedule.step_size", dict(metavar="EPOCHS",
                                               help="step schedule period (default: half the epochs, rounded up)")),
    ("--gamma", "schedule.gamma", dict(metavar="G", help="step schedule factor")),
    ("--power", "schedule.power", dict(metavar="P", help="poly schedule power")),
    ("--epochs", "epochs", dict(metavar="N", help="training epochs")),
    ("--batch-size", "batch_size", dict(metavar="B", help="training batch size")),
    ("--eval-batch-size", "eval_batch_size", dict(
        metavar="B", help="evaluation batch size (default: the batch size; 2 for --convention mtan)")),
    ("--seed", "seed", dict(metavar="S", help="random seed")),
    ("--convention", "convention", dict(metavar="NAME", help="metric convention: dataset or mtan")),
    ("--last-k", "last_k", dict(metavar="K", help="the summary is the mean of the last K epochs")),
    ("--out", "out", dict(metavar="DIR", help="run folder (default: runs/<data>-<model>-<weighting>-<time>)")),
    ("--device", "device", dict(metavar="DEV", help="cpu, cuda or cuda:N")),
    ("--num-workers", "num_workers", dict(metavar="N", help="data-loading processes")),
    ("--amp", "amp", dict(metavar="MODE", help="mixed precision of the forward pass: none, bf16 or fp16")),
    ("--channels-last", "channels_last", dict(action=argparse.BooleanOptionalAction,
                                              help="NHWC memory format for faster convolutions")),
    ("--compile", "compile", dict(action=argparse.BooleanOptionalAction, help="torch.compile the model")),
    ("--sync-bn", "sync_bn", dict(action=argparse.BooleanOptionalAction,
                                  help="synchronise BatchNorm across torchrun processes (CUDA)")),
    ("--preset", "preset", dict(metavar="NAME", help="named recipe from densemtl.presets, e.g. atinet")),
    ("--init-from", "init_from", dict(
        metavar="CKPT", help="warm start: load every matching tensor of a checkpoint file or run folder "
                             "of the same model family (e.g. MTAN for ATI-Net) before training")),
)


def default_value(key: str) -> Any:
    """The dataclass default of a dotted config key (as YAML shows it)."""
    node: Any = to_dict(TrainConfig())
    for part in key.split("."):
        node = node[part]
    return node


def _dest(key: str) -> str:
    return "cfg__" + key.replace(".", "__")


def add_config_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Add ``--config FILE`` and one flag per config key to ``parser``, except the keys in
    ``exclude`` (dotted, e.g. ``"model.name"``: ``densemtl compare`` sets those per run)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (flags override it)")
    group = parser.add_argument_group("config (override --config)")
    for flag, key, kwargs in _FLAGS:
        if key in exclude:
            continue
        kwargs = dict(kwargs)
        default = default_value(key)
        if "(default" not in kwargs["help"] and default not in (None, {}):
            shown = ("on" if default else "off") if isinstance(default, bool) else default
            kwargs["help"] += f" (default: {shown})"
        group.add_argument(flag, dest=_dest(key), default=None, **kwargs)


def _parse_options(items: list[str], key: str) -> dict:
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UserError(f"{_name(key)}: expected KEY=VALUE, got {item!r}")
        try:
            out[name] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[name] = raw
    return out


def flag_overrides(args: argparse.Namespace) -> dict:
    """The nested overrides from the flags the user actually gave."""
    out: dict = {}
    for _, key, _ in _FLAGS:
        value = getattr(args, _dest(key), None)
        if value is None:
            continue
        if key.endswith(".options"):
            value = _parse_options(value, key)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """defaults < preset < ``--config`` YAML < flags."""
    yaml_values = {}
    if getattr(args, "config", None):
        yaml_values = read_yaml(args.config)
        try:  # check the file on its own first, so that its errors name it
            config_from_dict(yaml_values)
        except UserError as e:
            raise UserError(f"{args.config}: {e}") from None
    return resolve(yaml_values, flag_overrides(args))
