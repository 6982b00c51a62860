"""The training loop: one :class:`Trainer` per run folder.

::

    trainer = Trainer(config)                 # new run in config.out (created)
    trainer = Trainer.resume("runs/x")        # continue an interrupted run
    summary = trainer.fit()                   # train, evaluate every epoch, write the summary

Per epoch: train (per-task losses -> weighting -> step), ``weighting.epoch_end``, scheduler step,
evaluate on the val split with streaming meters, then (main process only) write the checkpoint
atomically, append to metrics.jsonl and draw the preview picture. Every random draw of epoch e
(shuffling, augmentation, worker seeds) derives from ``(seed, e)``, so a resumed run repeats
exactly what the uninterrupted run would have done.

Distributed hooks (for a DDP launcher): :meth:`Trainer.train_sampler` decides the order of the
training samples, meters are merged with :func:`~densemtl.engine.distributed.merge_meters`, and
only the main process writes files.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from tqdm import tqdm

from .. import viz
from ..errors import UserError
from ..models.info import count_params
from ..report import mean_std, plot_curves, run_summary_markdown
from ..tasks import Task
from ..weighting import StepContext, make_weighting
from . import build, distributed, speed
from .mtl_step import EpochStats, compute_losses, make_step, step_generator, task_of  # noqa: F401
from .baselines import evaluate_trivial, trivial_predictions
from .checkpoint import (
    FORMAT, VERSION, atomic_copy, atomic_save, atomic_write_text, check_model_name, load_checkpoint,
    load_model_state, rng_state, set_rng_state,
)
from .config import TrainConfig, config_from_dict, load_config, merge, save_yaml, to_dict
from .runfolder import RunFolder
from .warmstart import init_from_checkpoint

PREVIEW_ROWS = 4


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw in epoch ``epoch`` (1-based) of a run seeded ``seed``."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Trainer:
    """Trains the model a :class:`TrainConfig` describes, in the run folder ``config.out``.

    ``progress``: show tqdm bars (default: when stderr is a terminal). ``log``: where the
    one-line epoch reports go (default: print to stderr). Construct with :meth:`resume` to
    continue a run.
    """

    def __init__(self, config: TrainConfig, *, progress: bool | None = None,
                 log: Callable[[str], None] | None = None, _resume: dict | None = None):
        device = distributed.init_from_env(config.device)  # joins torchrun's process group, if any
        # DDP: every rank uses rank 0's resolved config (a default run folder name holds the time)
        self.config = distributed.broadcast_object(build.resolve(config))
        self.folder = RunFolder(self.config.out)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.device = build.device_of(device)
        self.is_main = distributed.is_main_process()
        cfg = self.config
        if _resume is None:
            self.folder.check_new()
        distributed.barrier()  # DDP: every rank has checked the folder before rank 0 creates it

        self.tasks = build.build_tasks(cfg)
        seed_everything(cfg.seed)  # model initialisation
        self.model = build.build_model(cfg, self.tasks).to(self.device)
        if _resume is None and cfg.init_from is not None:  # a resumed run restores its own weights
            self.log(init_from_checkpoint(self.model, cfg.init_from).summary())
        if cfg.sync_bn and self.device.type != "cuda":
            raise UserError(f"sync_bn (--sync-bn): SyncBatchNorm runs on CUDA devices only (torch has "
                            f"no CPU version); got device {cfg.device!r}")
        if cfg.sync_bn and distributed.world_size() > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        speed.prepare_model(self.model, channels_last=cfg.channels_last, compile=cfg.compile)
        self.weighting = make_weighting(cfg.weighting.name, list(self.tasks), **cfg.weighting.options).to(self.device)
        # what the training step calls: the model itself, or under DDP a wrapper that averages
        # the gradients of model and weighting; self.model stays the plain model (eval, checkpoints)
        self.train_model = distributed.data_parallel(self.model, self.weighting, self.device)
        self.optimizer = build.build_optimizer(cfg, [*self.model.parameters(), *self.weighting.parameters()])
        self.scaler = speed.grad_scaler(self.device, cfg.amp)  # enabled for amp=fp16 only
        # how gradients are obtained and combined: chosen by the method's kind and weighting.scope
        self.step = make_step(model=self.model, train_model=self.train_model, weighting=self.weighting,
                              optimizer=self.optimizer, scaler=self.scaler, tasks=self.tasks,
                              device=self.device, amp=cfg.amp, channels_last=cfg.channels_last,
                              scope=cfg.weighting.scope, model_name=cfg.model.name)
        self.scheduler = build.build_scheduler(cfg, self.optimizer)
        self.train_set = build.build_dataset(cfg, "train", train=True)
        self.val_set = build.build_dataset(cfg, "val")
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise UserError(f"dataset {cfg.data.name!r} has an empty train or val split")
        self.epoch = 0  # finished epochs
        self.history: list[dict] = []
        self.elapsed = 0.0  # training + evaluation seconds over all sessions of this run

        if _resume is not None:
            self._restore(_resume)
        elif self.is_main:
            self.folder.create()
            save_yaml(cfg, self.folder.config)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def resume(cls, run_dir: str | Path, overrides: dict | None = None, **kwargs) -> "Trainer":
        """Continue the run in ``run_dir`` from its last checkpoint. ``overrides`` (nested
        config values, e.g. ``{"epochs": 20}``) change the saved config; a different model is
        refused."""
        folder = RunFolder(run_dir)
        folder.require_resumable()
        saved = load_config(folder.config)
        values = merge(to_dict(saved), overrides or {})
        if values["init_from"] != saved.init_from:
            raise UserError(f"--init-from cannot be used with --resume: the run in {folder.path} continues "
                            "from its own checkpoint (a warm start applies to a new run only)")
        values["out"] = str(folder.path)
        config = config_from_dict(values)
        ckpt = load_checkpoint(folder.last_checkpoint)
        check_model_name(ckpt, config.model.name)
        return cls(config, _resume=ckpt, **kwargs)

    def _restore(self, ckpt: dict) -> None:
        load_model_state(self.model, ckpt)
        if ckpt["tasks"] != list(self.tasks):
            raise UserError(
                f"checkpoint {ckpt['path']} was trained on tasks {ckpt['tasks']}, not {list(self.tasks)}"
            )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.weighting.load_state_dict(ckpt["weighting"])
        if "scaler" in ckpt:  # absent from checkpoints written before the amp option
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.elapsed = float(ckpt.get("elapsed", 0.0))
        if self.is_main:
            save_yaml(self.config, self.folder.config)
            self.folder.rewrite_metrics(self.history)  # drop lines of an epoch the checkpoint lacks
        self.log(f"resuming {self.folder.path} after epoch {self.epoch}")

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    # ------------------------------------------------------------------ data
    def train_sampler(self, epoch: int) -> Sampler:
        """Order of the training samples in ``epoch``: a shuffle seeded by (seed, epoch).
        Under DDP, this rank's share of the same shuffle (see distributed.train_sampler)."""
        if distributed.world_size() > 1:
            return distributed.train_sampler(self.train_set, epoch_seed(self.config.seed, epoch))
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.config.seed, epoch))
        return RandomSampler(self.train_set, generator=g)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None,
                generator: torch.Generator | None = None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
            num_workers=self.config.num_workers, generator=generator,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )

    @property
    def eval_batch_size(self) -> int:
        cfg = self.config
        if cfg.eval_batch_size is not None:
            return cfg.eval_batch_size
        return 2 if cfg.convention == "mtan" else cfg.batch_size  # MTAN evaluates in pairs

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; returns each task's mean unweighted loss. Raises
        :class:`TrainingDiverged` on a non-finite loss (before any step is taken with it)."""
        cfg = self.config
        seed_everything(epoch_seed(cfg.seed, epoch))
        g = torch.Generator()
        g.manual_seed(epoch_seed(cfg.seed, epoch) + 1)
        loader = self._loader(self.train_set, cfg.batch_size, self.train_sampler(epoch), generator=g)
        self.model.train()
        self.weighting.train()
        sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        self.epoch_stats = EpochStats(list(self.tasks))
        steps = 0
        steps_per_epoch = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs} train", leave=False,
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        for step, batch in enumerate(bar, 1):
            batch = to_device(batch, self.device)
            global_step = (epoch - 1) * steps_per_epoch + step
            ctx = StepContext(step=global_step, epoch=epoch, generator=step_generator(cfg.seed, global_step))

            def check(values: dict[str, float], step: int = step) -> None:
                if not all(math.isfinite(v) for v in values.values()):
                    self._diverged(epoch, step, values)

            result = self.step(batch["image"], batch, ctx, check)
            sums += result["losses"].cpu()
            self.epoch_stats.add(result, ctx)
            steps += 1
            if not bar.disable:
                bar.set_postfix({t[:4]: f"{v:.3f}" for t, v in zip(self.tasks, result["losses"].tolist())})
        if steps == 0:
            raise UserError(f"the train split of {cfg.data.name!r} gave no batch")
        # DDP: the mean over ranks (every rank takes as many steps), identical on every rank,
        # so that DWA's weights derived from these losses agree everywhere
        means = distributed.all_reduce_sum((sums / steps).to(self.device)) / distributed.world_size()
        return {t: float(m) for t, m in zip(self.tasks, means)}

    def _diverged(self, epoch: int, step: int, values: dict[str, float]) -> None:
        bad = ", ".join(f"{k} = {v}" for k, v in values.items() if not math.isfinite(v))
        kept = (f"the last good checkpoint {self.folder.last_checkpoint} (epoch {self.epoch}) is kept"
                if self.epoch else "no epoch had finished, so there is no checkpoint")
        raise TrainingDiverged(
            f"training stopped: non-finite loss at epoch {epoch}, step {step} ({bad}); {kept}. "
            f"Try a lower learning rate (optim.lr is {self.config.optim.lr:g})."
        )

    @torch.no_grad()
    def evaluate(self, dataset: Dataset | None = None, convention: str | None = None
                 ) -> tuple[dict[str, dict[str, float]], dict[str, float], dict]:
        """Metrics ``{task: {metric: value}}``, mean val losses ``{task: loss}`` and the first
        :data:`PREVIEW_ROWS` samples (images, targets, predictions) for the preview picture."""
        dataset = dataset or self.val_set
        shard = distributed.ShardSampler(dataset) if distributed.world_size() > 1 else None
        return evaluate_model(self.model, self.tasks, self._loader(dataset, self.eval_batch_size, shard),
                              convention or self.config.convention, self.device, self.progress and self.is_main,
                              amp=self.config.amp, channels_last=self.config.channels_last)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Train the remaining epochs and write the summary; returns the summary dict."""
        cfg = self.config
        if self.epoch == 0:
            self.log(f"training {build.describe(cfg)}; {count_params(self.model):,} parameters; "
                     f"{len(self.train_set)} train / {len(self.val_set)} val samples -> {self.folder.path}")
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self.train_epoch(epoch)
            step_record = self.epoch_stats.record()  # mean weights (and gradient statistics)
            self.weighting.epoch_end(train_loss)
            self.scheduler.step()
            val, val_loss, preview = self.evaluate()
            seconds = time.perf_counter() - start
            self.elapsed += seconds
            record = {"epoch": epoch, "lr": lr, "train_loss": train_loss, **step_record,
                      "val": val, "val_loss": val_loss, "time": round(seconds, 3)}
            self.epoch = epoch
            self.history.append(record)
            if self.is_main:
                atomic_save(self.checkpoint(), self.folder.last_checkpoint)
                self.folder.append_metrics(record)
                viz.save_preview(self.folder.picture(epoch), preview["images"], preview["targets"],
                                 preview["preds"], self.tasks,
                                 title=f"{cfg.model.name} on {cfg.data.name}, epoch {epoch}")
            self.log(format_epoch(record, self.tasks))
            distributed.barrier()
        return self.finish()

    def checkpoint(self) -> dict:
        """Everything needed to resume, or to evaluate / predict with the model."""
        return {
            "format": FORMAT, "version": VERSION,
            "model_name": self.config.model.name,
            "model_family": getattr(self.model, "densemtl_family", self.config.model.name),
            "tasks": list(self.tasks),
            "config": to_dict(self.config),
            "epoch": self.epoch, "history": self.history, "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def finish(self) -> dict:
        """Write final.pt, curves.png and summary.json/.md (main process); return the summary."""
        summary = self.summary()
        if self.is_main:
            atomic_copy(self.folder.last_checkpoint, self.folder.final_checkpoint)
            plot_curves(self.history, self.folder.curves)
            self.folder.write_json(self.folder.summary_json, summary)
            atomic_write_text(run_summary_markdown(summary, self.tasks), self.folder.summary_md)
            self.log(f"done: {self.folder.summary_md}")
        distributed.barrier()  # DDP: no rank returns (and, e.g., resumes the run) before the files exist
        return summary

    def summary(self) -> dict:
        cfg = self.config
        k = min(cfg.last_k, len(self.history))
        mean, std = mean_std([r["val"] for r in self.history[-k:]])
        train_plain = build.build_dataset(cfg, "train")  # no augmentation: the trivial statistics
        constants = trivial_predictions(train_plain, self.tasks)
        trivial = evaluate_trivial(constants, self._loader(self.val_set, self.eval_batch_size),
                                   self.tasks, cfg.convention)
        return {
            "run": str(self.folder.path),
            "model": cfg.model.name, "data": cfg.data.name, "tasks": list(self.tasks),
            "params": count_params(self.model),
            "epochs": self.epoch, "last_k": k, "convention": cfg.convention, "split": "val",
            "train_samples": len(self.train_set), "val_samples": len(self.val_set),
            "metrics": mean, "metrics_std": std,
            "final": self.history[-1]["val"],
            "trivial": trivial,
            "trivial_predictors": {t: describe_constant(self.tasks[t], c) for t, c in constants.items()},
            "seconds": round(self.elapsed, 1),
            "config": to_dict(cfg),
        }


def describe_constant(task: Task, value) -> str:
    if task.target_kind == "label":
        return f"majority class {int(value)}"
    if task.target_kind == "depth":
        return f"mean train depth {float(value):.4g}"
    if task.target_kind == "normal":
        return "mean train normal (" + ", ".join(f"{v:.3f}" for v in value.tolist()) + ")"
    return f"mean train edge fraction {float(value):.4g}"


@torch.no_grad()
def evaluate_model(model: nn.Module, tasks: dict[str, Task], loader: DataLoader, convention: str,
                   device: torch.device, progress: bool = False, *, amp: str = "none",
                   channels_last: bool = False
                   ) -> tuple[dict[str, dict[str, float]], dict[str, float], dict]:
    """Evaluate ``model`` over ``loader``: metrics, mean losses and the first samples for a preview.
    Under DDP each rank evaluates its shard; meters and loss sums are merged over the ranks."""
    model.eval()
    meters = {t: task.make_meter(convention) for t, task in tasks.items()}
    loss_sums = {t: 0.0 for t in tasks}
    batches = 0
    keep: dict = {"images": [], "targets": {t: [] for t in tasks}, "preds": {t: [] for t in tasks}}
    kept = 0
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress, dynamic_ncols=True):
        batch = to_device(batch, device)
        with speed.autocast(device, amp):
            outputs = model(speed.prepare_images(batch["image"], channels_last))
        for t, loss in compute_losses(tasks, outputs, batch).items():
            loss_sums[t] += float(loss)
        batches += 1
        preds = {t: task.activate(outputs[t]) for t, task in tasks.items()}
        for t in tasks:
            meters[t].update(preds[t], batch[t])
        if kept < PREVIEW_ROWS:
            n = min(PREVIEW_ROWS - kept, batch["image"].shape[0])
            keep["images"].append(batch["image"][:n].cpu())
            for t in tasks:
                keep["targets"][t].append(batch[t][:n].cpu())
                keep["preds"][t].append(preds[t][:n].cpu())
            kept += n
    meters = distributed.merge_meters(meters)
    metrics = {t: meter.compute() for t, meter in meters.items()}
    preview = {
        "images": torch.cat(keep["images"]),
        "targets": {t: torch.cat(v) for t, v in keep["targets"].items()},
        "preds": {t: torch.cat(v) for t, v in keep["preds"].items()},
    }
    *sums, batches = distributed.all_reduce_sum(
        torch.tensor([*loss_sums.values(), batches], dtype=torch.float64, device=device)).tolist()
    return metrics, {t: s / max(batches, 1) for t, s in zip(loss_sums, sums)}, preview


def format_epoch(record: dict, tasks: dict[str, Task]) -> str:
    """One log line: epoch, losses and each task's primary metric."""
    parts = [f"epoch {record['epoch']:3d}", f"lr {record['lr']:.2e}"]
    parts.append("loss " + " ".join(f"{t}={v:.4f}" for t, v in record["train_loss"].items()))
    val = []
    for t, task in tasks.items():
        spec = task.metric(task.primary)
        val.append(f"{t}.{spec.name}={record['val'][t][spec.name] * spec.scale:.2f}")
    parts.append("val " + " ".join(val))
    parts.append(f"{record['time']:.1f}s")
    return " | ".join(parts)


def train(config: TrainConfig, **kwargs) -> dict:
    """Train a new run described by ``config``; returns its summary."""
    return Trainer(config, **kwargs).fit()


def is_finished(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished run (summary.json and final.pt written)."""
    return RunFolder(run_dir).is_finished()


__all__ = [
    "Trainer", "TrainingDiverged", "train", "is_finished", "evaluate_model", "compute_losses",
    "epoch_seed",
]
