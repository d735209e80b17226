"""TensorBoard backend of :class:`~crossderm.train.tracking.Tracker` (``torch.utils.tensorboard``).

``RUN_DIR/tensorboard/fold_<k>/``: per-epoch scalars, the resolved config and the job as text.
``RUN_DIR/tensorboard/pooled/``: the final metrics with CIs as scalars, ``metrics.md`` as text and the figures
(:mod:`crossderm.train.tracking_figures`) as images, replaced on every pool. A resumed fold writes
``purge_step`` = the first new epoch, which hides anything a crashed attempt logged beyond its checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossderm.runfolder import RunFolder
from crossderm.train.tracking import EPOCH_SCALARS, Tracker, final_scalars
from crossderm.train.tracking_figures import figure_rgb, figures


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def logged_epochs(folder: Path) -> set[int]:
    """The epochs (steps of ``train/loss``) that the event files in ``folder`` already hold (purges applied)."""
    if not _event_files(folder):
        return set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    if EPOCH_SCALARS["train_loss"] not in events.Tags()["scalars"]:
        return set()
    return {int(e.step) for e in events.Scalars(EPOCH_SCALARS["train_loss"])}


class TensorBoardTracker(Tracker):
    name = "TensorBoard"

    def __init__(self, run: RunFolder, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.SummaryWriter = SummaryWriter
        self.run, self.config = run, config
        self.writers: dict[int, Any] = {}
        self.logged: dict[int, set[int]] = {}

    def start_fold(self, fold: int, job: str, history: list[dict[str, Any]]) -> None:
        import yaml

        folder = self.run.tensorboard_fold(fold)
        fresh = not _event_files(folder)
        # only epochs the checkpoint holds count as logged; purge_step hides anything an earlier attempt logged
        # beyond them (all epochs when the fold starts from scratch)
        self.logged[fold] = set() if fresh else {e for e in logged_epochs(folder) if e <= len(history)}
        purge = None if fresh else len(history) + 1
        writer = self.writers[fold] = self.SummaryWriter(str(folder), purge_step=purge, flush_secs=30)
        if fresh:
            writer.add_text("config", f"```\n{yaml.safe_dump(self.config, sort_keys=False)}```", 0)
            writer.add_text("job", job, 0)
        for row in history:  # checkpointed epochs this log lacks (e.g. tracking turned on at --resume)
            self.log_epoch(fold, row)

    def log_epoch(self, fold: int, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        if epoch in self.logged[fold]:
            return
        writer = self.writers[fold]
        for column, tag in EPOCH_SCALARS.items():
            if row.get(column) is not None:
                writer.add_scalar(tag, float(row[column]), epoch)
        writer.flush()
        self.logged[fold].add(epoch)

    def end_fold(self, fold: int, run: RunFolder, state: dict[str, Any]) -> None:
        writer = self.writers.pop(fold, None)
        if writer is not None:
            writer.close()

    def log_pooled(self, run: RunFolder, metrics: dict[str, Any]) -> None:
        folder = run.tensorboard_pooled
        for old in _event_files(folder):  # a snapshot of metrics.json: the previous pool's is replaced
            old.unlink()
        writer = self.SummaryWriter(str(folder))
        try:
            for tag, value in final_scalars(metrics).items():
                writer.add_scalar(tag, value, 0)
            if run.metrics_md.is_file():
                writer.add_text("metrics", run.metrics_md.read_text(encoding="utf-8"), 0)
            for name, fig in figures(metrics).items():
                writer.add_image(name, figure_rgb(fig), 0, dataformats="HWC")
        finally:
            writer.close()

    def close(self, failed: bool = False) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
