"""``densemtl compare``: the MTAN paper's comparison in one command.

Trains every multi-task model under every loss weighting for every seed, plus the single-task
baselines once per task and seed, then tabulates them as the MTAN paper does (Liu et al. 2019,
Tables 2 and 3): parameters relative to one single-task network, GFLOPs, every metric of the
dataset as mean ± std over seeds, and Δm (SPEC 3) against the single-task runs of the same seed,
in both variants (one metric per task, all metrics), plus the literature Δm against the published
single-task constants (:data:`densemtl.metrics.LITERATURE_BASELINES`; lower is better, as in the
papers) where the data is nyuv2 or cityscapes with the published tasks and classes, "n/a" otherwise::

    OUT/
      runs/<model>-<weighting>-s<seed>/   one run folder per multi-task run (densemtl train layout)
      runs/<model>-<task>-s<seed>/        single-task runs (their weighting is irrelevant: "equal")
      compare.md, compare.csv, compare.json
      compare_delta.png                   Δm of every row, one point per seed, mean ± std
      compare_curves.png                  val primary metric and train loss per epoch of every run

A finished run (summary.json and final.pt written) is never trained again and an interrupted one
is resumed from its last checkpoint, so rerunning an interrupted comparison finishes it. Every run
of a grid shares one base config (the ``densemtl train`` flags); a run folder trained with other
settings is refused rather than silently mixed into the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .data import dataset_info
from .engine import build
from .engine.config import TrainConfig, format_size, load_config, to_dict
from .engine.runfolder import RunFolder
from .errors import UserError, unknown_name
from .metrics import DELTA_VARIANTS, delta_m, literature_baseline
from .models import get_entry, list_models
from .report import MISSING, ResultRow, mean_std, results_table
from .tasks import Task
from .weighting import list_weightings, weighting_class, weighting_options

BASELINE = "single"  # the default Δm reference: one SegNet per task
SINGLE_TASK_WEIGHTING = "equal"  # with one task every method reduces to (a rescaled) plain loss
LITERATURE = "literature"  # the Δm variant against fixed published constants, not the baseline runs
RUN_VARIANTS = tuple(v for v in DELTA_VARIANTS if v != LITERATURE)  # against the baseline runs
NOT_APPLICABLE = "n/a"
# Config keys that may differ between invocations without changing a run's results.
_IGNORED_KEYS = ("out", "device", "num_workers")


# ----------------------------------------------------------------------------- the grid

@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid. ``task`` is set for single-task models (one run per task),
    ``weighting`` for multi-task models."""

    model: str
    seed: int
    weighting: str | None = None
    task: str | None = None

    @property
    def name(self) -> str:
        """The run folder's name: ``split-dwa-s0`` or ``single-semantic-s0``."""
        return f"{self.model}-{self.task or self.weighting}-s{self.seed}"


@dataclass(frozen=True)
class Row:
    """One line of the table: a model under one weighting (``None`` for single-task models,
    whose row gathers one run per task)."""

    model: str
    weighting: str | None

    @property
    def label(self) -> str:
        return self.model if self.weighting is None else f"{self.model} · {self.weighting}"


@dataclass(frozen=True)
class Grid:
    """Models x weightings x seeds over ``tasks``; ``baseline`` is the single-task model whose
    runs are the Δm reference (always trained, first in the table)."""

    models: tuple[str, ...]
    weightings: tuple[str, ...]
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    baseline: str = BASELINE

    def is_single(self, model: str) -> bool:
        return get_entry(model).single_task

    @property
    def rows(self) -> list[Row]:
        """Baseline first, then the other single-task models, then each multi-task model under
        each weighting, in the order given."""
        single = [m for m in self.models if self.is_single(m) and m != self.baseline]
        multi = [m for m in self.models if not self.is_single(m)]
        return ([Row(self.baseline, None)] + [Row(m, None) for m in single]
                + [Row(m, w) for m in multi for w in self.weightings])

    def runs_of(self, row: Row, seed: int) -> list[RunSpec]:
        """The runs that make up ``row`` for ``seed`` (one per task for single-task rows)."""
        if row.weighting is None:
            return [RunSpec(row.model, seed, task=t) for t in self.tasks]
        return [RunSpec(row.model, seed, weighting=row.weighting)]

    def runs(self) -> list[RunSpec]:
        """Every run, seed by seed (a complete seed is available before the next one starts),
        baselines first within a seed."""
        return [spec for seed in self.seeds for row in self.rows for spec in self.runs_of(row, seed)]


def parse_names(text: str | Sequence[str], kind: str, option: str, valid: Sequence[str]) -> tuple[str, ...]:
    """``"a,b,c"`` -> ``("a", "b", "c")``; an unknown name is a UserError listing the valid ones."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if not names:
        raise UserError(f"option {option}: expected a comma-separated list of {kind} names, got {text!r}")
    for name in names:
        if name not in valid:
            e = unknown_name(kind, name, valid)
            raise UserError(f"option {option}: {e}") from None
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"option {option}: {kind} listed twice: {', '.join(duplicates)}")
    return tuple(names)


def make_grid(base: TrainConfig, models: str | Sequence[str], weightings: str | Sequence[str],
              seeds: int, baseline: str = BASELINE) -> Grid:
    """Check the names and build the grid; seeds are ``base.seed, base.seed + 1, ...``."""
    model_names = parse_names(models, "model", "--models", list_models())
    weighting_names = parse_names(weightings, "weighting", "--weightings", list_weightings())
    if baseline not in list_models():
        raise UserError(f"option --baseline: {unknown_name('model', baseline, list_models())}") from None
    if not get_entry(baseline).single_task:
        single = sorted(m for m in list_models() if get_entry(m).single_task)
        raise UserError(f"option --baseline: {baseline!r} is a multi-task model; expected a "
                        f"single-task model: {', '.join(single)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"option --seeds: expected a number of seeds >= 1, got {seeds!r}")
    tasks = tuple(base.data.tasks or dataset_info(base.data.name, **build.data_options(base)).tasks)
    if len(tasks) < 2:
        raise UserError(f"option --tasks: a multi-task comparison needs at least two tasks, got {list(tasks)}")
    if all(get_entry(m).single_task for m in model_names):
        raise UserError(f"option --models: {', '.join(model_names)} are all single-task models; "
                        "name at least one multi-task model to compare with them")
    return Grid(model_names, weighting_names, tuple(range(base.seed, base.seed + seeds)), tasks, baseline)


def _options_for(given: Mapping[str, object], accepted: Mapping[str, object]) -> dict:
    return {k: v for k, v in given.items() if k in accepted}


def _check_options_used(base: TrainConfig, grid: Grid) -> None:
    """``--model-opt`` / ``--weighting-opt`` go to every model / weighting that has the option;
    one that none of the grid's models / weightings has is a UserError."""
    models = [*grid.models, grid.baseline]
    for option in base.model.options:
        if not any(option in get_entry(m).options for m in models):
            raise UserError(f"option --model-opt {option}: none of the models {', '.join(models)} has an "
                            f"option {option!r} (see `densemtl models`)")
    for option in base.weighting.options:
        if not any(option in weighting_options(w) for w in grid.weightings):
            raise UserError(f"option --weighting-opt {option}: none of the weightings "
                            f"{', '.join(grid.weightings)} has an option {option!r}")


def run_config(base: TrainConfig, grid: Grid, spec: RunSpec, runs_dir: Path) -> TrainConfig:
    """The resolved config of one run: the base config with this run's model, weighting, tasks,
    seed and folder (model / weighting options only where that model / method has them)."""
    weighting = spec.weighting or SINGLE_TASK_WEIGHTING
    w_options = _options_for(base.weighting.options, weighting_options(weighting)) if spec.weighting else {}
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, tasks=[spec.task] if spec.task else list(grid.tasks)),
        model=dataclasses.replace(base.model, name=spec.model,
                                  options=_options_for(base.model.options, get_entry(spec.model).options)),
        # --scope applies to the gradient-level methods of the grid (loss-level ones take none)
        weighting=dataclasses.replace(base.weighting, name=weighting, options=w_options,
                                      scope=base.weighting.scope if weighting_class(weighting).kind != "loss" else None),
        seed=spec.seed,
        out=str(runs_dir / spec.name),
    )
    return build.resolve(cfg)


def _comparable(cfg: TrainConfig) -> dict:
    d = to_dict(cfg)
    for key in _IGNORED_KEYS:
        d.pop(key, None)
    return d


def _differences(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} there, {vb!r} now")
    return out


# ----------------------------------------------------------------------------- running

@dataclass
class RunResult:
    """A finished run: its summary (summary.json) and its per-epoch records (metrics.jsonl)."""

    spec: RunSpec
    summary: dict
    history: list[dict]


class Comparison:
    """Trains the runs of ``grid`` under ``OUT/runs`` and writes the tables and plots to ``OUT``.

    ``log`` receives one progress line per run (default: print to stdout); the trainer's epoch
    lines go to ``train_log`` (default: stderr, indented). ``progress``: the trainer's bars
    (default: when stderr is a terminal).
    """

    def __init__(self, base: TrainConfig, grid: Grid, out: str | Path, *,
                 log: Callable[[str], None] | None = None,
                 train_log: Callable[[str], None] | None = None, progress: bool | None = None):
        self.grid = grid
        self.out = Path(out)
        self.runs_dir = self.out / "runs"
        self.progress = progress
        self._log = log or (lambda msg: print(msg, flush=True))
        self._train_log = train_log or (lambda msg: print(f"    {msg}", file=sys.stderr, flush=True))
        _check_options_used(base, grid)
        self.base = base
        self._costs: dict[RunSpec, tuple[int, float]] = {}
        # Resolve every run's config before training anything: a bad size or task fails at once.
        self.configs = {spec: run_config(base, grid, spec, self.runs_dir) for spec in grid.runs()}
        self.reference_config = next(self.configs[s] for s in self.configs if s.task is None)
        self.tasks: dict[str, Task] = build.build_tasks(self.reference_config)  # every task of the grid
        cfg = self.reference_config
        self.variant = dataset_info(cfg.data.name, **build.data_options(cfg)).variant
        # The literature Δm applies only to the published datasets, tasks and class counts.
        try:
            literature_baseline(self.variant, self.tasks)
            self.literature, self.literature_na = self.variant, None
        except UserError as e:
            self.literature, self.literature_na = None, str(e)

    # ------------------------------------------------------------------ one run
    def _check_existing(self, spec: RunSpec) -> None:
        """Refuse a run folder whose saved config differs from the planned one."""
        folder = RunFolder(self.configs[spec].out)
        if not folder.config.is_file():
            return
        diffs = _differences(_comparable(load_config(folder.config)), _comparable(self.configs[spec]))
        if diffs:
            raise UserError(
                f"run folder {folder.path} was trained with other settings ({'; '.join(diffs)}); "
                "use another --out, or delete that folder to train it again"
            )

    def train_one(self, spec: RunSpec, announce: Callable[[str], None]) -> tuple[RunResult, str]:
        """Train, resume or reuse one run; returns its result and what was done. ``announce``
        gets a line before any training starts."""
        from .engine.trainer import Trainer

        cfg = self.configs[spec]
        folder = RunFolder(cfg.out)
        self._check_existing(spec)
        if folder.is_finished():
            return load_result(spec, folder), "finished earlier, skipped"
        start = time.perf_counter()
        try:
            if folder.last_checkpoint.is_file():
                trainer = Trainer.resume(folder.path, progress=self.progress, log=self._train_log)
                status = f"resumed after epoch {trainer.epoch}"
                announce(f"resuming after epoch {trainer.epoch} of {cfg.epochs} ...")
            else:
                if folder.has_run():  # stopped before its first epoch finished: nothing to keep
                    shutil.rmtree(folder.path)
                trainer = Trainer(cfg, progress=self.progress, log=self._train_log)
                status = "trained"
                announce(f"training {cfg.epochs} epochs ...")
            trainer.fit()
        except UserError as e:  # e.g. a diverged run: say which run of the grid it was
            raise UserError(f"run {spec.name} ({folder.path}): {e}") from None
        return load_result(spec, folder), f"{status} in {time.perf_counter() - start:.1f} s"

    def train_all(self) -> dict[RunSpec, RunResult]:
        """Every run of the grid, training those not finished yet; one progress line per run."""
        specs = self.grid.runs()
        results = {}
        for i, spec in enumerate(specs, 1):
            prefix = f"[{i}/{len(specs)}] {spec.name}:"
            result, status = self.train_one(spec, lambda msg: self._log(f"{prefix} {msg}"))
            results[spec] = result
            self._log(f"{prefix} {status}; {_primary_line(result, self.tasks)}")
        return results

    # ------------------------------------------------------------------ the table
    def run_costs(self, spec: RunSpec) -> tuple[int, float]:
        """(parameters, GFLOPs of one forward at the training size) of a run's network."""
        from .models.info import count_gflops, count_params

        if spec not in self._costs:
            cfg = self.configs[spec]
            model = build.build_model(cfg, build.build_tasks(cfg))
            self._costs[spec] = (count_params(model), count_gflops(model, cfg.data.size))
        return self._costs[spec]

    def row_costs(self, row: Row) -> tuple[int, float]:
        """Parameters and GFLOPs of a row; a single-task row counts one network per task, as
        the MTAN paper does."""
        costs = [self.run_costs(spec) for spec in self.grid.runs_of(row, self.grid.seeds[0])]
        return sum(p for p, _ in costs), math.fsum(g for _, g in costs)

    def unit_params(self) -> int:
        """Parameters of one single-task network (the baseline on the first task): the unit of
        the MTAN paper's #P. column."""
        return self.run_costs(RunSpec(self.grid.baseline, self.grid.seeds[0], task=self.grid.tasks[0]))[0]

    def table(self, results: Mapping[RunSpec, RunResult]) -> list[dict]:
        """One dict per row: metrics and Δm per seed, their mean and std over seeds, params,
        params relative to one single-task network, GFLOPs and the run names."""
        grid = self.grid
        baseline = Row(grid.baseline, None)
        unit = self.unit_params()
        reference = {s: row_results(results, grid.runs_of(baseline, s)) for s in grid.seeds}
        out = []
        for row in grid.rows:
            per_seed = {s: row_results(results, grid.runs_of(row, s)) for s in grid.seeds}
            mean, std = mean_std(list(per_seed.values()))
            params, gflops = self.row_costs(row)
            out.append({
                "label": row.label, "model": row.model, "weighting": row.weighting,
                "params": params, "params_rel": params / unit, "gflops": gflops,
                "metrics": mean, "metrics_std": std,
                "delta_m": self.deltas(per_seed, reference),
                "per_seed": per_seed,
                "runs": [spec.name for s in grid.seeds for spec in grid.runs_of(row, s)],
            })
        return out

    def deltas(self, per_seed: Mapping[int, Mapping], reference: Mapping[int, Mapping]) -> dict:
        """Δm of one row in every variant: against the baseline runs of each seed, and the
        literature variant against the published constants (or ``not_applicable`` and why)."""
        out = {v: delta_over_seeds(per_seed, reference, self.tasks, v) for v in RUN_VARIANTS}
        if self.literature is None:
            out[LITERATURE] = {"mean": None, "std": None, "per_seed": {}, "not_applicable": self.literature_na}
        else:
            out[LITERATURE] = delta_over_seeds(per_seed, None, self.tasks, LITERATURE, self.literature)
        return out

    def trivial_row(self, results: Mapping[RunSpec, RunResult]) -> dict:
        """The trivial predictors (majority class, mean train depth, mean train normal) that every
        run's summary scores on the same val split, with their Δm: the scale against which the
        models' differences can be read. They depend on the data only, so seeds agree."""
        grid = self.grid
        baseline = Row(grid.baseline, None)
        per_seed = {s: row_results(results, grid.runs_of(baseline, s), "trivial") for s in grid.seeds}
        reference = {s: row_results(results, grid.runs_of(baseline, s)) for s in grid.seeds}
        mean, _ = mean_std(list(per_seed.values()))
        return {"label": "trivial predictors", "model": "trivial", "weighting": None,
                "params": None, "params_rel": None, "gflops": None, "metrics": mean, "metrics_std": None,
                "delta_m": self.deltas(per_seed, reference), "per_seed": per_seed, "runs": []}

    # ------------------------------------------------------------------ outputs
    def settings(self, results: Mapping[RunSpec, RunResult]) -> dict:
        """What the header of every output states: data, split, convention, recipe, Δm, machine."""
        cfg = self.reference_config
        summary = next(iter(results.values())).summary
        tasks = self.tasks
        return {
            "dataset": cfg.data.name,
            "variant": self.variant,
            "data_root": cfg.data.root or "(default synthetic scenes in the cache)",
            "split": summary.get("split", "val"),
            "convention": cfg.convention,
            "tasks": list(self.grid.tasks),
            "size": format_size(cfg.data.size),
            "width": cfg.model.width,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "optimizer": f"{cfg.optim.name} lr {cfg.optim.lr:g} weight decay {cfg.optim.weight_decay:g}",
            "schedule": _describe_schedule(cfg),
            "augment": cfg.data.augment,
            "last_k": summary.get("last_k", cfg.last_k),
            "train_samples": summary.get("train_samples"),
            "val_samples": summary.get("val_samples"),
            "seeds": list(self.grid.seeds),
            "models": list(self.grid.models),
            "weightings": list(self.grid.weightings),
            "baseline": self.grid.baseline,
            "single_task_weighting": SINGLE_TASK_WEIGHTING,
            "delta_m": {v: [f"{t}.{m.name}" for t, task in tasks.items() for m in _delta_metrics(task, v)]
                        for v in RUN_VARIANTS},
            "delta_m_literature": self.literature_settings(),
            "base_config": to_dict(self.base),
            "environment": environment(),
        }

    def literature_settings(self) -> dict:
        """What the literature Δm is measured against, or why it does not apply."""
        if self.literature is None:
            return {"reference": None, "not_applicable": self.literature_na}
        ref = literature_baseline(self.literature, self.tasks)
        return {"reference": ref.dataset, "num_classes": ref.num_classes, "source": ref.source,
                "metrics": [f"{t}.{m}" for t in self.tasks for m in ref.values[t]],
                "baseline": {t: dict(ref.values[t]) for t in self.tasks},
                "sign": "lower is better (the papers' sign)"}

    def write(self, results: Mapping[RunSpec, RunResult]) -> dict[str, Path]:
        """Write compare.md/.csv/.json and the two plots to ``OUT``; returns their paths."""
        rows = self.table(results)
        trivial = self.trivial_row(results)
        settings = self.settings(results)
        tasks = self.tasks
        table_kw = dict(variant=settings["variant"], split=settings["split"], convention=settings["convention"])
        several = len(self.grid.seeds) > 1

        def result_rows(extra: Callable[[dict], dict]) -> list[ResultRow]:
            return [ResultRow(r["label"], r["metrics"], r["metrics_std"] if several else None, extra(r))
                    for r in [*rows, trivial]]

        paths = {name: self.out / f"compare.{name}" for name in ("md", "csv", "json")}
        markdown = results_table(result_rows(lambda r: _markdown_extra(r, several)), tasks, **table_kw)
        undefined = sorted({f"Δm {v} is undefined ({MISSING}): {d['undefined']}" for r in rows
                            for v, d in r["delta_m"].items() if d.get("undefined")})
        notes = "".join(f"\n{u}.\n" for u in undefined)
        _write_text(paths["md"], markdown_header(settings, tasks) + "\n" + markdown + notes)
        _write_text(paths["csv"], results_table(result_rows(_csv_extra), tasks, "csv", **table_kw))
        doc = json.loads(results_table(result_rows(_json_extra), tasks, "json", **table_kw))
        doc["settings"] = settings
        _write_text(paths["json"], json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        paths["delta_png"] = plot_deltas(rows, self.out / "compare_delta.png", settings)
        paths["curves_png"] = plot_run_curves(self.grid, results, tasks, self.out / "compare_curves.png")
        return paths

    def run(self) -> dict[str, Path]:
        """Train what is missing, then write the outputs."""
        results = self.train_all()
        paths = self.write(results)
        self._log(f"wrote {paths['md']}, {paths['csv'].name}, {paths['json'].name}, "
                  f"{paths['delta_png'].name}, {paths['curves_png'].name}")
        return paths


# ----------------------------------------------------------------------------- helpers

def load_result(spec: RunSpec, folder: RunFolder) -> RunResult:
    """Read a finished run's summary.json and metrics.jsonl."""
    try:
        summary = json.loads(folder.summary_json.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the summary of run {spec.name}: {folder.summary_json}: {e}; "
                        f"delete {folder.path} to train it again") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics"), dict):
        raise UserError(f"{folder.summary_json}: expected a run summary with 'metrics'; "
                        f"delete {folder.path} to train it again")
    return RunResult(spec, summary, folder.read_metrics())


def row_results(results: Mapping[RunSpec, RunResult], specs: Sequence[RunSpec],
                key: str = "metrics") -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of one row and seed: a multi-task run's last-k means, or the
    union of the single-task runs' (each contributing its own task). ``key``: which results of
    the summaries ("metrics" or "trivial")."""
    out: dict[str, dict[str, float]] = {}
    for spec in specs:
        metrics = results[spec].summary[key]
        for task, values in metrics.items():
            if spec.task is None or task == spec.task:
                out[task] = dict(values)
    return out


def delta_over_seeds(per_seed: Mapping[int, Mapping], reference: Mapping[int, Mapping] | None,
                     tasks: Mapping[str, Task], variant: str, literature: str | None = None) -> dict:
    """Δm of each seed against the baseline of the same seed (for the literature variant: against
    the published constants of dataset ``literature``, ``reference`` unused), then mean and sample
    std over seeds. Where a baseline metric is 0 (a barely trained baseline) or a run lacks a
    metric, Δm is undefined: mean and std are None and ``undefined`` says why."""
    values: dict[int, float | None] = {}
    undefined = None
    for seed, results in per_seed.items():
        try:
            if variant == LITERATURE:
                values[seed] = delta_m(results, None, tasks, variant, reference=literature)
            else:
                values[seed] = delta_m(results, reference[seed], tasks, variant)
        except UserError as e:
            values[seed] = None
            undefined = f"seed {seed}: {e}"
    if undefined:
        return {"mean": None, "std": None, "per_seed": values, "undefined": undefined}
    mean, std = mean_std([{"Δm": {variant: v}} for v in values.values()])
    return {"mean": mean["Δm"][variant], "std": std["Δm"][variant], "per_seed": values}


def _delta_metrics(task: Task, variant: str):
    """The metrics of ``task`` in a Δm variant against the baseline runs (see RUN_VARIANTS)."""
    return [task.metric(task.primary)] if variant == "primary" else [m for m in task.metrics if m.in_delta_all]


def _describe_schedule(cfg: TrainConfig) -> str:
    s = cfg.schedule
    if s.name == "step":
        return f"step: x{s.gamma:g} every {s.step_size or max(1, cfg.epochs // 2)} epochs"
    if s.name == "poly":
        return f"poly, power {s.power:g}"
    return s.name


def _primary_line(result: RunResult, tasks: Mapping[str, Task]) -> str:
    parts = []
    for t, values in result.summary["metrics"].items():
        if t in tasks:
            spec = tasks[t].metric(tasks[t].primary)
            parts.append(f"{t} {spec.label} {values[spec.name] * spec.scale:.4g}")
    return ", ".join(parts)


def _pm(mean: float | None, std: float | None, several: bool, digits: int = 2, sign: bool = False) -> str:
    if mean is None:
        return MISSING
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if several else text


def delta_title(variant: str) -> str:
    """Column title of a Δm variant: ↑ for ours (positive = better than the baseline runs), ↓ for
    the literature variant (the papers' sign, negative = better)."""
    return f"Δm {variant} (%) {'↓' if variant == LITERATURE else '↑'}"


def _delta_cell(d: dict, several: bool) -> str:
    if d.get("not_applicable"):
        return NOT_APPLICABLE
    return _pm(d["mean"], d["std"], several, sign=True)


def _markdown_extra(r: dict, several: bool) -> dict:
    if r["params"] is None:  # the trivial predictors
        return {"#P.": MISSING, "params": MISSING, "GFLOPs": MISSING,
                **{delta_title(v): _delta_cell(d, False) for v, d in r["delta_m"].items()}}
    return {"#P.": f"{r['params_rel']:.2f}", "params": r["params"], "GFLOPs": f"{r['gflops']:.3g}",
            **{delta_title(v): _delta_cell(d, several) for v, d in r["delta_m"].items()}}


def _csv_extra(r: dict) -> dict:
    out = {"model": r["model"], "weighting": r["weighting"] or "", "params_rel": r["params_rel"],
           "params": r["params"], "gflops": r["gflops"]}
    for v, d in r["delta_m"].items():
        na = NOT_APPLICABLE if d.get("not_applicable") else None
        out[f"delta_m.{v}"] = na or d["mean"]
        out[f"delta_m.{v}.std"] = na or d["std"]
    return out


def _json_extra(r: dict) -> dict:
    return {k: r[k] for k in ("model", "weighting", "params", "params_rel", "gflops", "delta_m", "per_seed", "runs")}


def markdown_header(settings: Mapping, tasks: Mapping[str, Task]) -> str:
    """Title and the facts a reader needs to interpret the table."""
    s = settings
    env = s["environment"]
    labels = {f"{t}.{m.name}": f"{t} {m.label}" for t, task in tasks.items() for m in task.metrics}
    seeds = s["seeds"]
    lines = [
        f"# densemtl compare: {', '.join(s['models'])} x {', '.join(s['weightings'])} on {s['variant']}",
        "",
        f"- data: {s['dataset']} (variant {s['variant']}), {s['data_root']}; tasks {', '.join(s['tasks'])}; "
        f"{s['train_samples']} train / {s['val_samples']} val samples at {s['size']}"
        f"{', augmented' if s['augment'] else ''}",
        f"- evaluated on split {s['split']}, metric convention {s['convention']}; each run's numbers are "
        f"the mean of its last {s['last_k']} epochs' val metrics; "
        + (f"cells are mean ± sample std over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
           if len(seeds) > 1 else f"one seed ({seeds[0]}), so no spread"),
        f"- recipe (every run): width {s['width']:g}, size {s['size']}, {s['epochs']} epochs, batch "
        f"{s['batch_size']}, {s['optimizer']}, schedule {s['schedule']}; single-task runs use "
        f"{s['single_task_weighting']} weighting",
        f"- Δm (Maninis et al. 2019, in %, higher is better) against the {s['baseline']} runs of the same "
        "seed, computed per seed, then mean ± std. Variants: "
        + "; ".join(f"{v}: {', '.join(labels[k] for k in keys)}" for v, keys in s["delta_m"].items()),
        _literature_line(s["delta_m_literature"], labels),
        f"- #P.: parameters relative to one single-task network ({s['baseline']} on {s['tasks'][0]}); "
        "single-task rows count one network per task. GFLOPs: one forward pass at the training size, "
        "2 FLOPs per multiply-add.",
        "- last row: trivial predictors (majority class, mean train depth, mean train normal) scored on the "
        "same split, the floor against which the models' differences can be read",
        f"- machine: {env['cpu']} ({env['cores']} cores){', GPU ' + env['gpu'] if env['gpu'] else ''}, "
        f"torch {env['torch']}, Python {env['python']}",
    ]
    return "\n".join(lines) + "\n"


def _literature_line(lit: Mapping, labels: Mapping[str, str]) -> str:
    if lit["reference"] is None:
        return f"- Δm literature: {NOT_APPLICABLE} ({lit['not_applicable']})"
    return (f"- Δm literature (in %, **lower** is better, the papers' sign): against the published single-task "
            f"constants for {lit['reference']} ({lit['source']}), not the runs above; metrics "
            f"{', '.join(labels[k] for k in lit['metrics'])}. The papers average the last 10 of 200 epochs on "
            "the test split under the mtan convention: other settings compare only roughly")


def environment() -> dict:
    """CPU model, core count, torch and Python versions (recorded next to every table)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------- plots

_STYLES = ("-", "--", ":", "-.")


def _colours(names: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def plot_deltas(rows: Sequence[dict], out_png: Path, settings: Mapping) -> Path:
    """Δm of every row, one panel per variant: one dot per seed, the mean ± std as a bar."""
    from matplotlib.figure import Figure

    colours = _colours(list(dict.fromkeys(r["model"] for r in rows)))
    variants = list(rows[0]["delta_m"]) if rows else list(DELTA_VARIANTS)
    fig = Figure(figsize=(max(6.0, 0.55 * len(rows) + 2), 3.2 * len(variants)))
    axes = fig.subplots(len(variants), 1, squeeze=False)[:, 0]
    xs = list(range(len(rows)))
    for ax, variant in zip(axes, variants):
        undefined = ""
        for x, r in zip(xs, rows):
            d = r["delta_m"][variant]
            if d["mean"] is None:
                undefined = (f"{NOT_APPLICABLE}: {d['not_applicable']}" if d.get("not_applicable")
                             else f"undefined: {d['undefined']}")
                continue
            seeds = list(d["per_seed"].values())
            offsets = [0.25 * (i / (len(seeds) - 1) - 0.5) for i in range(len(seeds))] if len(seeds) > 1 else [0.0]
            ax.scatter([x + o for o in offsets], seeds, s=14, color=colours[r["model"]], alpha=0.7, zorder=3)
            ax.errorbar([x], [d["mean"]], yerr=[d["std"]], fmt="_", markersize=14, color="black",
                        capsize=3, zorder=4)
        if undefined:
            ax.text(0.5, 0.5, textwrap.fill(undefined, 60), transform=ax.transAxes,
                    ha="center", va="center", fontsize=8)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylabel(delta_title(variant), fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels([r["label"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if variant == LITERATURE:
            ax.set_title("literature Δm: against the published single-task constants, lower is better",
                         fontsize=8)
    axes[0].set_title(f"Δm vs {settings['baseline']} on {settings['variant']} ({settings['split']}), "
                      f"{len(settings['seeds'])} seed(s): dots = seeds, bar = mean ± std", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return out_png


def plot_run_curves(grid: Grid, results: Mapping[RunSpec, RunResult], tasks: Mapping[str, Task],
                    out_png: Path) -> Path:
    """Per epoch, every run's val primary metric (one panel per task) and, for multi-task runs,
    the unweighted sum of the task losses on the training set. Colour = model, line style =
    weighting (single-task runs: solid)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(r.model for r in grid.rows))
    colours = _colours(models)
    styles = {w: _STYLES[i % len(_STYLES)] for i, w in enumerate(grid.weightings)}
    panels = len(tasks) + 1
    ncols = 2 if panels == 4 else min(panels, 3)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(4.0 * ncols + 1.3, 3.0 * nrows))
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    loss_ax = axes[len(tasks)]
    for spec, result in results.items():
        epochs = [rec["epoch"] for rec in result.history]
        style = dict(color=colours[spec.model], linestyle=styles.get(spec.weighting, "-"), linewidth=1, alpha=0.8)
        for ax, (t, task) in zip(axes, tasks.items()):
            if spec.task in (None, t):
                m = task.metric(task.primary)
                ax.plot(epochs, [rec["val"][t][m.name] * m.scale for rec in result.history], **style)
        if spec.task is None:
            loss_ax.plot(epochs, [math.fsum(rec["train_loss"].values()) for rec in result.history], **style)
    for ax, (t, task) in zip(axes, tasks.items()):
        m = task.metric(task.primary)
        ax.set_title(f"val {t} {m.label} {'↑' if m.higher_is_better else '↓'}", fontsize=9)
    loss_ax.set_title("train loss, sum over tasks (unweighted)", fontsize=9)
    for ax in axes[:panels]:
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[panels:]:
        ax.axis("off")
    handles = [Line2D([], [], color=colours[m], label=m) for m in models]
    handles += [Line2D([], [], color="black", linestyle=styles[w], label=w) for w in grid.weightings]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1))
    fig.savefig(out_png, dpi=100)
    return out_png


def compare(base: TrainConfig, models: str | Sequence[str], weightings: str | Sequence[str], seeds: int,
            out: str | Path, baseline: str = BASELINE, **kwargs) -> dict[str, Path]:
    """Run (or finish) a comparison and write its outputs; ``kwargs`` go to :class:`Comparison`."""
    grid = make_grid(base, models, weightings, seeds, baseline)
    return Comparison(base, grid, out, **kwargs).run()
