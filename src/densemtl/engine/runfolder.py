"""The run folder: where a training run keeps everything it produces.

::

    RUN/
      config.yaml            resolved config (re-run or resume from it)
      metrics.jsonl          one JSON object per finished epoch
      checkpoints/last.pt    written atomically after every epoch
      checkpoints/final.pt   copy of the last epoch's checkpoint once training has finished
      pictures/epoch_XXX.png image | ground truth | prediction per task, one per evaluation
      curves.png             training curves (when the run has finished)
      summary.json           mean of the last k epochs' val metrics, trivial baselines, timing
      summary.md             the same as tables
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .checkpoint import atomic_write_text


class RunFolder:
    """Paths and small file operations of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    final_checkpoint = property(lambda self: self.path / "checkpoints" / "final.pt")
    pictures = property(lambda self: self.path / "pictures")
    curves = property(lambda self: self.path / "curves.png")
    summary_json = property(lambda self: self.path / "summary.json")
    summary_md = property(lambda self: self.path / "summary.md")

    def picture(self, epoch: int) -> Path:
        return self.pictures / f"epoch_{epoch:03d}.png"

    def has_run(self) -> bool:
        """True when a run has started here (config written or a checkpoint present)."""
        return self.config.exists() or self.last_checkpoint.exists()

    def is_finished(self) -> bool:
        return self.summary_json.exists() and self.final_checkpoint.exists()

    def check_new(self) -> None:
        """Refuse a folder that already holds a run (before any expensive setup)."""
        if self.has_run():
            raise UserError(
                f"run folder {self.path} already holds a run; continue it with --resume {self.path} "
                "or choose another --out"
            )

    def create(self) -> None:
        """Make a fresh run folder; refuse one that already holds a run."""
        self.check_new()
        for d in (self.path, self.checkpoints, self.pictures):
            d.mkdir(parents=True, exist_ok=True)

    def require_resumable(self) -> None:
        if not self.path.is_dir():
            raise UserError(f"--resume {self.path}: no such run folder")
        if not self.config.is_file():
            raise UserError(f"--resume {self.path}: no config.yaml there (not a densemtl run folder)")
        if not self.last_checkpoint.is_file():
            raise UserError(
                f"--resume {self.path}: no checkpoints/last.pt (the run stopped before its first "
                "epoch finished); start it again with --out"
            )
        for stale in self.path.rglob(".*.tmp"):  # left by a write that was killed mid-way
            stale.unlink(missing_ok=True)  # torchrun: every rank resuming may remove the same file

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def rewrite_metrics(self, records: list[dict]) -> None:
        """Replace metrics.jsonl with ``records`` (on resume: the checkpoint's history)."""
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records), self.metrics)

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        records = []
        for n, line in enumerate(self.metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{self.metrics}: line {n} is not valid JSON") from None
        return records

    def write_json(self, path: Path, data: dict) -> None:
        atomic_write_text(json.dumps(data, indent=2) + "\n", path)
