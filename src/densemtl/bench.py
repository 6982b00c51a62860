"""Speed, memory and compute of the registered models (``densemtl bench``).

For every model, two phases are measured on a synthetic batch (random images and targets of the
requested tasks; speed does not depend on the values):

- ``train``: one training step as the trainer runs it: release the previous gradients, forward
  (under autocast if ``amp``), the tasks' losses in float32
  (:func:`~densemtl.engine.trainer.compute_losses`), their sum, backward and an Adam step (through
  the grad scaler for fp16);
- ``infer``: one forward pass in eval mode without gradients.

Each phase runs ``warmup`` untimed steps, then ``steps`` timed ones, and reports the median and
the 10th / 90th percentiles of ms/step, images/s at the median, the peak memory (CPU: the
process's resident-set high-water mark ``VmHWM`` from ``/proc/self/status``, reset before the
phase; GPU: ``torch.cuda.max_memory_allocated``), parameters, forward GFLOPs per image
(:func:`~densemtl.models.info.count_gflops`), the FLOPs of the timed step (train: forward +
backward counted by :class:`torch.utils.flop_counter.FlopCounterMode`) and the achieved GFLOP/s.

``baseline=True`` adds the reference point of the speed work: MTAN-SegNet as the paper's code
runs it (per-task loop ``fused=False``, float32, NCHW, eager, torch's default per-parameter Adam,
gradients cleared after the forward pass).

By default every phase runs in a fresh process (``spawn``), so that the memory high-water mark
and the allocator state of one measurement do not leak into the next.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from . import __version__
from .engine import speed
from .errors import UserError
from .models import create_model, get_entry
from .models.info import count_gflops, count_params
from .tasks import Task, make_tasks, task_channels

BASELINE_MODEL = "mtan"
BASELINE_LABEL = "mtan (baseline)"
PHASES = ("train", "infer")


@dataclass(frozen=True)
class BenchSpec:
    """One measurement: a model in one phase under one set of options."""

    model: str
    phase: str = "train"  # train | infer
    size: tuple[int, int] = (64, 64)
    batch_size: int = 2
    width: float = 1.0
    tasks: tuple[str, ...] = ("semantic", "depth", "normal")
    num_classes: int = 13
    amp: str = "none"
    channels_last: bool = True
    compile: bool = False
    device: str = "cpu"
    steps: int = 10
    warmup: int = 3
    threads: int | None = None  # torch intra-op threads; None: torch's default
    baseline: bool = False  # the paper-style reference (see module doc); ignores the speed options
    options: dict = field(default_factory=dict)  # model options
    # a multi-task optimisation method: the train step runs the trainer's own step for it
    # (engine/mtl_step.py); None: the plain sum of the task losses, as before
    weighting: str | None = None
    scope: str | None = None  # gradient-level methods; None: the method's default

    @property
    def label(self) -> str:
        if self.baseline:
            return BASELINE_LABEL
        return f"{self.model} + {self.weighting}" if self.weighting else self.model


def environment() -> dict:
    """Where the numbers come from: device, versions, threads and how busy the machine was."""
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "densemtl": __version__,
        "default_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # how idle OpenMP threads wait: PASSIVE (sleep at once) makes every small parallel op pay
        # a wake-up, several times slower on a quiet CPU; unset is the spinning default
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def synthetic_batch(tasks: dict[str, Task], batch: int, size: tuple[int, int], device: torch.device,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images and valid targets for ``tasks`` (a few invalid pixels included)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = {"image": torch.rand(batch, 3, h, w, generator=g)}
    for name, task in tasks.items():
        hole = torch.rand(batch, 1, h, w, generator=g) < 0.05
        if task.target_kind == "label":
            t = torch.randint(0, task.num_classes, (batch, h, w), generator=g)
            t[hole[:, 0]] = -1
        elif task.target_kind == "depth":
            t = (torch.rand(batch, 1, h, w, generator=g) * 10).masked_fill(hole, 0.0)
        elif task.target_kind == "normal":
            t = torch.randn(batch, 3, h, w, generator=g)
            t = (t / t.norm(dim=1, keepdim=True)).masked_fill(hole, 0.0)
        else:  # edge
            t = (torch.rand(batch, 1, h, w, generator=g) < 0.1).float()
        out[name] = t
    return {k: v.to(device) for k, v in out.items()}


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile of an already sorted list (q in [0, 1])."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _timed(run: Callable[[], None], warmup: int, steps: int, sync: Callable[[], None]
           ) -> tuple[float, list[float], list[float]]:
    """Seconds of the first call (includes compilation and one-time setup), then the wall-clock
    and the process CPU seconds (all threads) of each of ``steps`` timed calls after ``warmup``
    untimed ones (the first one included). On a machine shared with other work, CPU time is
    the steadier of the two: it does not count the time this process waited for a core."""
    start = time.perf_counter()
    run()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        run()
    sync()
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return first, wall, cpu


def _train_flops(model: nn.Module, tasks: dict[str, Task], images: torch.Tensor, batch: dict) -> float:
    """FLOPs of one forward + backward pass (eager, before any compilation)."""
    from .engine.trainer import compute_losses

    counter = FlopCounterMode(display=False)
    with counter:
        total = sum(compute_losses(tasks, model(images), batch).values())
        total.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


@dataclass
class _Step:
    """A measurement's prepared state: ``run()`` performs one step of the phase."""

    run: Callable[[], None]
    sync: Callable[[], None]
    model: nn.Module
    tasks: dict[str, Task]
    device: torch.device
    amp: str
    channels_last: bool
    compile: bool
    params: int
    gflops: float
    step_flops: float
    method_times: list = field(default_factory=list)  # seconds inside the method per call


def _prepare(spec: BenchSpec) -> _Step:
    """Build the model, batch, optimiser and step function of one measurement."""
    from .engine.trainer import compute_losses

    if spec.phase not in PHASES:
        raise UserError(f"phase: expected one of {', '.join(PHASES)}, got {spec.phase!r}")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    amp, channels_last, compile_ = ("none", False, False) if spec.baseline else \
        (speed.check_amp(spec.amp, "--amp"), spec.channels_last, spec.compile)
    options = dict(spec.options)
    if spec.baseline:
        options["fused"] = False
    tasks = make_tasks(spec.tasks, num_classes=spec.num_classes)
    if get_entry(spec.model).single_task:
        tasks = dict(list(tasks.items())[:1])
    torch.manual_seed(0)
    model = create_model(spec.model, task_channels(tasks), width=spec.width, **options).to(device)
    params = count_params(model)
    gflops = count_gflops(model, spec.size)
    batch = synthetic_batch(tasks, spec.batch_size, spec.size, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    method_times: list[float] = []
    if spec.phase == "train" and spec.weighting:
        model.train()
        step_flops = _train_flops(model, tasks, batch["image"], batch)
        speed.prepare_model(model, channels_last=channels_last, compile=compile_)
        run = _method_step(spec, model, tasks, batch, device, amp, channels_last, method_times)
    elif spec.phase == "train":
        model.train()
        step_flops = _train_flops(model, tasks, batch["image"], batch)
        speed.prepare_model(model, channels_last=channels_last, compile=compile_)
        images = speed.prepare_images(batch["image"], channels_last)
        optimizer = speed.make_optimizer("adam", model.parameters(), lr=1e-4,
                                         fused=False if spec.baseline else None)
        scaler = speed.grad_scaler(device, amp)
        # the trainer frees the last step's gradients before the forward pass; the paper's code
        # clears them after it, so they stay alive (a model's worth of memory) during the forward
        zero_first = not spec.baseline

        def run() -> None:
            if zero_first:
                optimizer.zero_grad(set_to_none=True)
            with speed.autocast(device, amp):
                outputs = model(images)
            total = sum(compute_losses(tasks, outputs, batch).values())
            if not zero_first:
                optimizer.zero_grad(set_to_none=True)
            speed.backward_and_step(total, optimizer, scaler)
    else:
        model.eval()
        step_flops = gflops * 1e9 * spec.batch_size
        speed.prepare_model(model, channels_last=channels_last, compile=compile_)
        images = speed.prepare_images(batch["image"], channels_last)

        def run() -> None:
            with torch.no_grad(), speed.autocast(device, amp):
                model(images)

    return _Step(run, sync, model, tasks, device, amp, channels_last, compile_, params, gflops, step_flops,
                 method_times)


def _method_step(spec: BenchSpec, model: nn.Module, tasks: dict[str, Task], batch: dict, device: torch.device,
                 amp: str, channels_last: bool, method_times: list[float]) -> Callable[[], None]:
    """One training step of ``spec.weighting`` as the trainer takes it; the time spent inside the
    method itself (weights / update from the gradients, solvers included) goes to ``method_times``."""
    from .engine.mtl_step import make_step, step_generator
    from .weighting import StepContext, make_weighting

    weighting = make_weighting(spec.weighting, list(tasks)).to(device)
    scope = spec.scope if spec.scope is not None or weighting.kind == "loss" else weighting.default_scope
    optimizer = speed.make_optimizer("adam", [*model.parameters(), *weighting.parameters()], lr=1e-4)
    scaler = speed.grad_scaler(device, amp)
    step = make_step(model=model, train_model=model, weighting=weighting, optimizer=optimizer, scaler=scaler,
                     tasks=tasks, device=device, amp=amp, channels_last=channels_last, scope=scope,
                     model_name=spec.model)
    depth = {"n": 0}  # aggregate calls gramian_weights: time the outer call only
    for name in ("aggregate", "gramian_weights"):
        inner = getattr(weighting, name, None)
        if inner is None:
            continue

        def timed(*args, _inner=inner, **kwargs):
            depth["n"] += 1
            start = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                depth["n"] -= 1
                if depth["n"] == 0:
                    method_times.append(time.perf_counter() - start)
        setattr(weighting, name, timed)
    counter = {"step": 0}

    def run() -> None:
        counter["step"] += 1
        ctx = StepContext(step=counter["step"], epoch=1, generator=step_generator(0, counter["step"]))
        step(batch["image"], batch, ctx, lambda values: None)
    return run


def measure(spec: BenchSpec) -> dict:
    """Run one measurement in this process; returns one result row (a flat dict)."""
    step = _prepare(spec)
    run, sync, model, tasks, device = step.run, step.sync, step.model, step.tasks, step.device
    amp, channels_last, compile_ = step.amp, step.channels_last, step.compile
    params, gflops, step_flops = step.params, step.gflops, step.step_flops

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _status_kb("VmRSS")
    peak_reset = device.type == "cuda" or _reset_rss_peak()
    first, times, cpu_times = _timed(run, max(spec.warmup, 1), spec.steps, sync)
    if device.type == "cuda":
        peak_mb, memory_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    else:
        # The kernel folds per-thread RSS counters into VmHWM lazily, so the mark can trail an
        # RSS reading by a few pages: the peak is at least every RSS we have seen.
        seen = [kb for kb in (_status_kb("VmHWM"), rss_before, _status_kb("VmRSS")) if kb is not None]
        peak_mb = max(seen) / 1024 if seen else float("nan")
        memory_kind = "peak RSS" if peak_reset else "peak RSS (process lifetime)"

    times.sort()
    median = statistics.median(times)
    # time inside the method (solvers): aggregate wraps gramian_weights, so count the outer calls
    per_call = step.method_times[-spec.steps:] if step.method_times else []
    return {
        "model": spec.label, "phase": spec.phase, "weighting": spec.weighting or "", "scope": spec.scope or "",
        "method_ms": 1000 * statistics.median(per_call) if per_call else None,
        "batch": spec.batch_size, "size": f"{spec.size[0]}x{spec.size[1]}", "width": spec.width,
        "tasks": ",".join(tasks), "amp": amp, "channels_last": channels_last, "compile": compile_,
        "fused": bool(getattr(model, "fused", False)),
        "device": spec.device, "threads": torch.get_num_threads(),
        "steps": spec.steps, "warmup": spec.warmup,
        "ms_median": 1000 * median, "ms_p10": 1000 * _percentile(times, 0.1),
        "ms_p90": 1000 * _percentile(times, 0.9), "ms_min": 1000 * times[0],
        "cpu_ms_median": 1000 * statistics.median(cpu_times),
        "first_step_s": first,
        "images_per_s": spec.batch_size / median,
        "peak_mem_mb": peak_mb, "rss_before_mb": (rss_before or 0) / 1024 if device.type == "cpu" else None,
        "memory": memory_kind,
        "params": params, "gflops_per_image": gflops,
        "step_gflop": step_flops / 1e9, "achieved_gflops": step_flops / 1e9 / median,
    }


def _measure_isolated(spec: BenchSpec) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return pool.submit(measure, spec).result()


def paired_ratios(specs: list[BenchSpec], rounds: int) -> dict[tuple[str, str], list[float]]:
    """Per round, the baseline's step time over each model's, from steps taken in alternation
    in this process: ``{(label, phase): ratios}`` for the non-baseline specs of every phase that
    has a baseline spec.

    All measurements of a phase are prepared and warmed up side by side; then each round times
    one step of every one of them, in the opposite order every other round. A change in the
    machine's speed (other tenants of a shared host, frequency scaling) then hits the baseline
    and the model within the same second, which interleaving whole measurements cannot do.
    """
    ratios: dict[tuple[str, str], list[float]] = {}
    for phase in PHASES:
        base = [s for s in specs if s.phase == phase and s.baseline]
        others = [s for s in specs if s.phase == phase and not s.baseline]
        if not base or not others:
            continue
        steps = [_prepare(spec) for spec in base[:1] + others]
        for step, spec in zip(steps, base[:1] + others):
            for _ in range(max(spec.warmup, 1)):
                step.run()
            step.sync()
        times: list[list[float]] = [[] for _ in steps]
        for r in range(rounds):
            order = range(len(steps)) if r % 2 == 0 else reversed(range(len(steps)))
            for i in order:
                start = time.perf_counter()
                steps[i].run()
                steps[i].sync()
                times[i].append(time.perf_counter() - start)
        for spec, own in zip(others, times[1:]):
            ratios[(spec.label, phase)] = [b / t for b, t in zip(times[0], own)]
    return ratios


def _paired_isolated(specs: list[BenchSpec], rounds: int) -> dict[tuple[str, str], list[float]]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return pool.submit(paired_ratios, specs, rounds).result()


def add_paired(rows: list[dict], ratios: dict[tuple[str, str], list[float]]) -> None:
    """``paired_ratio`` (median) and ``paired_p25`` / ``paired_p75`` of the per-round ratios."""
    for r in rows:
        values = sorted(ratios.get((r["model"], r["phase"]), []))
        if values:
            r["paired_ratio"] = statistics.median(values)
            r["paired_p25"], r["paired_p75"] = _percentile(values, 0.25), _percentile(values, 0.75)
            r["paired_rounds"] = len(values)


def plan(models: list[str], phases: tuple[str, ...] = PHASES, baseline: bool = False,
         weightings: list[str] | None = None, **common) -> list[BenchSpec]:
    """The measurements of a ``densemtl bench`` call, baseline first. Unknown models fail early.
    ``weightings``: the train phase once per method (and ``equal``) through the trainer's step."""
    for name in models:
        get_entry(name)
    if not models and not baseline:
        raise UserError("--models: expected at least one model name")
    specs = []
    if baseline:
        specs += [BenchSpec(BASELINE_MODEL, phase, baseline=True, **common) for phase in phases]
    specs += [BenchSpec(name, phase, **common) for name in models for phase in phases
              if not (weightings and phase == "train")]
    if weightings:  # "equal" first: the reference of the "x equal" column
        from .weighting import weighting_class
        for w in weightings:
            weighting_class(w)  # an unknown name lists the valid ones
        ordered = ["equal", *[w for w in weightings if w != "equal"]]
        specs += [BenchSpec(name, "train", weighting=w, **common)
                  for name in models if "train" in phases for w in ordered]
    return specs


def run_benchmark(specs: list[BenchSpec], isolate: bool = True, repeat: int = 1,
                  progress: Callable[[str], None] | None = None, paired: int = 0) -> list[dict]:
    """Measure every spec (each in a fresh process when ``isolate``); rows in the same order.

    ``repeat`` > 1 measures the whole list that many times, interleaved (all specs, then all
    again, ...), so that a change in the machine's load hits every spec alike; each row is then
    the repeat with the median ms/step, and ``runs_ms`` lists the medians of all repeats.
    ``paired`` > 0 adds :func:`paired_ratios` over that many rounds (one fresh process for all).
    """
    runs: list[list[dict]] = [[] for _ in specs]
    for r in range(repeat):
        for i, spec in enumerate(specs):
            if progress:
                progress(f"bench: {spec.label} {spec.phase} ({r + 1}/{repeat}) ...")
            runs[i].append(_measure_isolated(spec) if isolate else measure(spec))
    rows = []
    for measured in runs:
        ordered = sorted(measured, key=lambda row: row["ms_median"])
        row = dict(ordered[(len(ordered) - 1) // 2])  # the median repeat (the lower one of two)
        row["runs_ms"] = [round(m["ms_median"], 1) for m in measured]
        rows.append(row)
    add_speedups(rows)
    if paired:
        if progress:
            progress(f"bench: paired steps, {paired} rounds ...")
        add_paired(rows, _paired_isolated(specs, paired) if isolate else paired_ratios(specs, paired))
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``vs_baseline``: baseline ms/step over this row's, for the MTAN rows of the same phase.
    ``vs_equal``: this row's ms/step over the ``equal`` row's of the same model and phase (the
    cost of a multi-task optimisation method, measured in the same call)."""
    base = {r["phase"]: r["ms_median"] for r in rows if r["model"] == BASELINE_LABEL}
    for r in rows:
        ok = r["model"] in (BASELINE_MODEL, BASELINE_LABEL) and r["phase"] in base
        r["vs_baseline"] = base[r["phase"]] / r["ms_median"] if ok else None
    equal = {(r["model"].split(" + ")[0], r["phase"]): r["ms_median"] for r in rows if r.get("weighting") == "equal"}
    for r in rows:
        ref = equal.get((r["model"].split(" + ")[0], r["phase"])) if r.get("weighting") else None
        r["vs_equal"] = r["ms_median"] / ref if ref else None


# ----------------------------------------------------------------------------- reports

CSV_COLUMNS = (
    "model", "phase", "batch", "size", "width", "tasks", "amp", "channels_last", "compile", "fused",
    "device", "threads", "steps", "warmup", "ms_median", "ms_p10", "ms_p90", "ms_min", "cpu_ms_median",
    "first_step_s",
    "images_per_s", "vs_baseline", "weighting", "scope", "vs_equal", "method_ms", "paired_ratio", "paired_p25", "paired_p75", "paired_rounds", "peak_mem_mb", "rss_before_mb", "memory", "params",
    "gflops_per_image", "step_gflop", "achieved_gflops", "runs_ms",
)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else
                             " ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def _options(r: dict) -> str:
    opts = [r["amp"]] if r["amp"] != "none" else ["fp32"]
    opts += ["channels_last"] if r["channels_last"] else ["NCHW"]
    if r["compile"]:
        opts.append("compile")
    if r["fused"]:
        opts.append("fused")
    return " ".join(opts)


def to_markdown(rows: list[dict], env: dict, command: str | None = None) -> str:
    """A table of the rows with the environment above it."""
    lines = ["# densemtl bench", ""]
    if command:
        lines += ["```", command, "```", ""]
    device = env["gpu"] or env["cpu"]
    threads = sorted({r["threads"] for r in rows})
    lines += [
        f"- device: {device} ({env['cpu_count']} CPU cores visible); threads: {', '.join(map(str, threads))}",
        f"- torch {env['torch']}, python {env['python']}, densemtl {env['densemtl']}; {env['date']}",
        f"- OMP_WAIT_POLICY: {env.get('omp_wait_policy') or 'unset (default)'}",
        f"- load average (1, 5, 15 min) when started: {', '.join(map(str, env['load_average']))}"
        + (f"; when done: {', '.join(map(str, env['load_average_end']))}" if env.get("load_average_end") else ""),
        "",
        "| model | phase | options | batch | size | width | ms/step median [p10, p90] | CPU ms/step | "
        "images/s | x baseline | x equal | method ms | peak memory (MB) | params | GFLOPs/image | GFLOP/step | "
        "GFLOP/s |",
        "|---|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs = f"{r['vs_baseline']:.2f}" if r.get("vs_baseline") else ""
        vs_eq = f"{r['vs_equal']:.2f}" if r.get("vs_equal") else ""
        method = f"{r['method_ms']:.1f}" if r.get("method_ms") is not None else ""
        lines.append(
            f"| {r['model']} | {r['phase']} | {_options(r)} | {r['batch']} | {r['size']} | {r['width']:g} | "
            f"{r['ms_median']:.1f} [{r['ms_p10']:.1f}, {r['ms_p90']:.1f}] | {r['cpu_ms_median']:.0f} | "
            f"{r['images_per_s']:.2f} | {vs} | {vs_eq} | {method} | "
            f"{r['peak_mem_mb']:.0f} | {r['params']:,} | {r['gflops_per_image']:.2f} | {r['step_gflop']:.2f} | "
            f"{r['achieved_gflops']:.1f} |"
        )
    kinds = sorted({r["memory"] for r in rows})
    repeated = [r for r in rows if len(r.get("runs_ms", [])) > 1]
    if repeated:
        lines += ["", f"Each row is the median of {len(repeated[0]['runs_ms'])} interleaved repeats; "
                  "their ms/step medians in order:", ""]
        lines += [f"- {r['model']} {r['phase']}: {', '.join(f'{v:.1f}' for v in r['runs_ms'])}" for r in repeated]
    paired = [r for r in rows if r.get("paired_ratio")]
    if paired:
        lines += ["", f"Paired: baseline and model steps taken in alternation in one process, "
                  f"{paired[0]['paired_rounds']} rounds (order reversed every other round); x baseline "
                  "per round, median [p25, p75]:", ""]
        lines += [f"- {r['model']} {r['phase']}: **{r['paired_ratio']:.2f}** "
                  f"[{r['paired_p25']:.2f}, {r['paired_p75']:.2f}]" for r in paired]
    lines += [
        "",
        f"Memory: {', '.join(kinds)} during the phase (CPU: whole process, libraries included). "
        "CPU ms/step: process CPU time of a step, all threads (median). "
        "GFLOPs count 2 per multiply-add; train steps count forward + backward. "
        "x equal: ms/step over the equal-weighting step of the same model (a method's cost); "
        "method ms: time inside the method per step (weights or update from the gradients, solvers included).",
    ]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], env: dict, out: str | Path, command: str | None = None) -> list[Path]:
    """Write ``bench.md`` and ``bench.csv`` into ``out`` (created); returns the paths."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    md, csv_path = out / "bench.md", out / "bench.csv"
    md.write_text(to_markdown(rows, env, command))
    csv_path.write_text(to_csv(rows))
    return [md, csv_path]


def as_json(rows: list[dict], env: dict) -> dict:
    return {"environment": env, "results": rows}


def command_line() -> str:
    return "densemtl " + " ".join(sys.argv[1:]) if sys.argv else "densemtl bench"
