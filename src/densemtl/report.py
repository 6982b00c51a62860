"""Result tables (markdown, CSV, JSON) and training-curve plots.

Tables are driven by the task specs: every :class:`~densemtl.tasks.MetricSpec` gives a column
with its label, an arrow (↑ higher is better, ↓ lower is better) and its display scale (fractions
are shown in percent in markdown). The trainer's run summary, ``densemtl score`` and comparison
tables all go through :func:`results_table`.

- markdown: for humans and papers; a header line names the dataset variant, split and metric
  convention, a footnote says which columns are percentages; optional bold best per column.
- CSV: for spreadsheets; raw values (fractions, metres, degrees) under ``task.metric`` keys,
  ``task.metric.std`` for standard deviations, ``delta_m.VARIANT`` in percent.
- JSON: the same raw values, nested, plus the column descriptions.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import UserError
from .metrics import delta_m
from .tasks import MetricSpec, Task

Results = Mapping[str, Mapping[str, float]]  # {task: {metric: value}}
FORMATS = ("markdown", "csv", "json")
MISSING = "—"
SPLITS = ("train", "val", "test")  # curve keys starting with one of these are drawn together


@dataclass
class ResultRow:
    """One line of a table: a method's results, optional spreads and extra columns."""

    name: str
    results: Results
    std: Results | None = None  # same layout as results
    extra: dict[str, object] = field(default_factory=dict)  # e.g. {"params (M)": 44.2}


def mean_std(runs: Sequence[Results]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single run) of each metric over
    ``runs`` (e.g. seeds, or the last k epochs). Only metrics present in every run are kept."""
    if not runs:
        raise ValueError("mean_std needs at least one run")
    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    for task, metrics in runs[0].items():
        for metric in metrics:
            values = [r[task][metric] for r in runs if metric in r.get(task, {})]
            if len(values) != len(runs):
                continue
            mu = math.fsum(values) / len(values)
            var = math.fsum((v - mu) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            mean.setdefault(task, {})[metric] = mu
            std.setdefault(task, {})[metric] = math.sqrt(var)
    return mean, std


def header_line(variant: str | None = None, split: str | None = None,
                convention: str | None = None) -> str:
    """``"dataset nyuv2 · split val · metric convention dataset"`` (parts that are given)."""
    parts = [f"{what} {value}" for what, value in
             (("dataset", variant), ("split", split), ("metric convention", convention)) if value]
    return " · ".join(parts)


def _columns(tasks: Mapping[str, Task]) -> list[tuple[str, MetricSpec]]:
    return [(name, spec) for name, task in tasks.items() for spec in task.metrics]


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _lookup(results: Results | None, task: str, metric: str) -> float | None:
    if results is None:
        return None
    value = results.get(task, {}).get(metric)
    return None if value is None else float(value)


def _decimals(values: Iterable[float], precision: int) -> int:
    """``precision`` decimals for a column of magnitudes >= 1, two more for smaller ones
    (depth errors in metres: 0.5906 rather than 0.59)."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    return precision if not finite or max(finite) >= 1 else precision + 2


def _deltas(rows: Sequence[ResultRow], tasks: Mapping[str, Task], baseline: Results | None,
            variants: Sequence[str]) -> list[dict[str, float | None]]:
    """Δm of every row for each variant; None where a row lacks the metrics it needs."""
    for v in variants:
        delta_m(baseline, baseline, tasks, v)  # a baseline lacking a metric is a UserError
    out = []
    for row in rows:
        deltas: dict[str, float | None] = {}
        for v in variants:
            try:
                deltas[v] = delta_m(row.results, baseline, tasks, v)
            except UserError:  # the row lacks a metric (e.g. a single-task row)
                deltas[v] = None
        out.append(deltas)
    return out


def results_table(
    rows: Sequence[ResultRow],
    tasks: Mapping[str, Task],
    fmt: str = "markdown",
    *,
    baseline: Results | None = None,
    delta: Sequence[str] = ("primary", "all"),
    variant: str | None = None,
    split: str | None = None,
    convention: str | None = None,
    precision: int = 2,
    bold_best: bool = False,
) -> str:
    """Render ``rows`` as a table with one column per metric of ``tasks``.

    With a ``baseline`` (``{task: {metric: value}}``, e.g. the single-task results), a Δm
    column per variant in ``delta`` is added (see :func:`densemtl.metrics.delta_m`); a row
    lacking a needed metric gets an empty Δm cell, a baseline lacking one is a UserError.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    variants = list(delta) if baseline is not None else []
    deltas = _deltas(rows, tasks, baseline, variants)
    head = header_line(variant, split, convention)
    if fmt == "json":
        return _json_table(rows, tasks, deltas, variant, split, convention)
    if fmt == "csv":
        return _csv_table(rows, tasks, deltas, variants)
    return _markdown_table(rows, tasks, deltas, variants, head, precision, bold_best)


def _extra_keys(rows: Sequence[ResultRow]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.extra if k not in keys]
    return keys


def _markdown_table(rows, tasks, deltas, variants, head, precision, bold_best) -> str:
    columns = _columns(tasks)
    extras = _extra_keys(rows)
    titles = ["method", *extras, *(f"{t} {s.label} {_arrow(s.higher_is_better)}" for t, s in columns),
              *(f"Δm {v} (%) ↑" for v in variants)]
    cells: list[list[str]] = [[row.name, *(_plain(row.extra.get(k)) for k in extras)] for row in rows]
    for task, spec in columns:
        means = [_lookup(r.results, task, spec.name) for r in rows]
        stds = [_lookup(r.std, task, spec.name) for r in rows]
        scaled = [None if m is None else m * spec.scale for m in means]
        digits = _decimals([v for v in scaled if v is not None], precision)
        best = _best(scaled, spec.higher_is_better) if bold_best else None
        for i, (m, s) in enumerate(zip(scaled, stds)):
            text = MISSING if m is None else f"{m:.{digits}f}"
            if m is not None and s is not None:
                text += f" ± {s * spec.scale:.{digits}f}"
            cells[i].append(f"**{text}**" if best is not None and m == best else text)
    for v in variants:
        values = [d[v] for d in deltas]
        best = _best(values, True) if bold_best else None
        for i, value in enumerate(values):
            text = MISSING if value is None else f"{value:+.{precision}f}"
            cells[i].append(f"**{text}**" if best is not None and value == best else text)
    lines = [head, ""] if head else []
    lines.append("| " + " | ".join(titles) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(titles) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    percent = [f"{t} {s.label}" for t, s in columns if s.scale == 100.0]
    notes = "↑ higher is better, ↓ lower is better."
    if percent:
        notes += " In percent: " + ", ".join(percent) + "."
    if variants:
        notes += " Δm: mean relative gain over the baseline (Maninis et al. 2019)."
    lines += ["", notes]
    return "\n".join(lines) + "\n"


def _plain(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _best(values: Sequence[float | None], higher: bool) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    return max(finite) if higher else min(finite)


def _csv_table(rows, tasks, deltas, variants) -> str:
    columns = _columns(tasks)
    extras = _extra_keys(rows)
    keys = [f"{t}.{s.name}" for t, s in columns]
    has_std = any(r.std for r in rows)
    fields = ["method", *extras, *keys, *(f"{k}.std" for k in keys if has_std),
              *(f"delta_m.{v}" for v in variants)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for row, d in zip(rows, deltas):
        means = [_lookup(row.results, t, s.name) for t, s in columns]
        stds = [_lookup(row.std, t, s.name) for t, s in columns] if has_std else []
        values = [*(row.extra.get(k) for k in extras), *means, *stds, *(d[v] for v in variants)]
        writer.writerow([row.name, *("" if v is None else v for v in values)])
    return buf.getvalue()


def _json_table(rows, tasks, deltas, variant, split, convention) -> str:
    doc = {
        "variant": variant, "split": split, "convention": convention,
        "columns": [{"task": t, "metric": s.name, "label": s.label, "higher_is_better": s.higher_is_better,
                     "scale": s.scale} for t, s in _columns(tasks)],
        "rows": [{"name": r.name, "results": _plain_results(r.results),
                  **({"std": _plain_results(r.std)} if r.std else {}),
                  **({"delta_m": d} if d else {}), **({"extra": r.extra} if r.extra else {})}
                 for r, d in zip(rows, deltas)],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"


def _plain_results(results: Results) -> dict[str, dict[str, float]]:
    return {t: {m: float(v) for m, v in metrics.items()} for t, metrics in results.items()}


def run_summary_markdown(summary: Mapping, tasks: Mapping[str, Task]) -> str:
    """The markdown summary a training run writes next to its checkpoints.

    ``summary`` is the trainer's summary dict: model, data, split, convention, epochs, last_k,
    params, metrics (mean of the last k epochs; optional metrics_std), final, trivial,
    trivial_predictors, seconds, run.
    """
    k = summary["last_k"]
    rows = [ResultRow(f"{summary['model']} (mean of last {k} epoch{'s' if k != 1 else ''})",
                      summary["metrics"], summary.get("metrics_std")),
            ResultRow(f"{summary['model']} (epoch {summary['epochs']})", summary["final"])]
    if summary.get("trivial"):
        rows.append(ResultRow("trivial predictors", summary["trivial"]))
    table = results_table(rows, tasks, variant=summary.get("data"), split=summary.get("split"),
                          convention=summary.get("convention"))
    lines = [f"# {summary['model']} on {summary.get('data')}", ""]
    facts = [("run", summary.get("run")), ("parameters", summary.get("params")),
             ("epochs", summary.get("epochs")), ("train / val samples",
             f"{summary.get('train_samples')} / {summary.get('val_samples')}"),
             ("training time (s)", summary.get("seconds"))]
    lines += [f"- {what}: {_plain(value)}" for what, value in facts if value is not None]
    lines += ["", table]
    if summary.get("trivial_predictors"):
        lines.append("Trivial predictors: " + "; ".join(
            f"{t}: {d}" for t, d in summary["trivial_predictors"].items()) + ".")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------- curves
def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file (e.g. a run's metrics.jsonl); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"metrics file {path} does not exist")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {n} is not a JSON object")
        records.append(record)
    return records


def flatten(record: Mapping, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested record under dotted keys (``val.semantic.miou``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _panel_and_series(key: str, together: Sequence[str]) -> tuple[str, str]:
    """``train_loss.depth`` -> (``loss.depth``, ``train``); ``val.semantic.miou`` ->
    (``semantic.miou``, ``val``); ``weights.depth`` -> (``weights``, ``depth``) when
    ``weights`` is in ``together`` (entries may be dotted prefixes, e.g.
    ``gradients.grad_norm``); other keys form their own panel."""
    for prefix in sorted(together, key=len, reverse=True):
        if key.startswith(prefix + "."):
            return prefix, key[len(prefix) + 1:]
    head, _, rest = key.partition(".")
    for split in SPLITS:
        if head == split and rest:
            return rest, split
        if head.startswith(split + "_"):
            return ".".join(p for p in (head[len(split) + 1:], rest) if p), split
    return key, key


def plot_curves(source: str | Path | Sequence[Mapping], out_png: str | Path,
                keys: Sequence[str] | None = None, x: str | None = None,
                together: Sequence[str] = ("weights", "gradients.grad_norm", "gradients.grad_cosine")) -> Path:
    """Plot training curves to ``out_png``: one panel per quantity, train and val together
    (matplotlib's Agg renderer, without pyplot).

    ``source``: a metrics.jsonl path or a list of records (dicts, possibly nested). ``x``: the
    key of the horizontal axis (default ``epoch``, else ``step``, else the record number).
    ``keys``: glob patterns of the dotted keys to draw (default: every numeric key).
    ``together``: keys whose leaves share one panel (default: the task weights, and the
    per-task gradient norms and pairwise cosines that gradient-level methods log).
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend, no GUI, thread-safe
    from matplotlib.ticker import MaxNLocator

    records = read_jsonl(source) if isinstance(source, (str, Path)) else list(source)
    flat = [flatten(r) for r in records]
    if x is None:
        x = next((k for k in ("epoch", "step") if any(k in f for f in flat)), None)
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for i, f in enumerate(flat):
        xv = f.get(x, float(i)) if x else float(i)
        for key, value in f.items():
            if key == x or (keys and not any(fnmatch(key, p) for p in keys)):
                continue
            panel, series = _panel_and_series(key, together)
            xs, ys = panels.setdefault(panel, {}).setdefault(series, ([], []))
            xs.append(xv)
            ys.append(value)
    if not panels:
        raise UserError("no numeric values to plot" + (f" matching {list(keys)}" if keys else ""))
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.7 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (panel, series) in zip(axes.flat, panels.items()):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(x or "record", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(series) > 1 or next(iter(series)) != panel:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
