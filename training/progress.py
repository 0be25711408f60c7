"""Progress that reads the same on a terminal and in a log file.

Lightning's own bars number epochs from 0 ("Epoch 7/7" for the eighth of eight) and, when
stdout is not a terminal (an Airflow task log, CI), repaint into the log. :class:`EpochProgress`
numbers epochs from 1, like the per-epoch log lines and the trackers' steps, and draws a bar
only on a terminal; elsewhere the per-epoch log lines are the progress.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import pytorch_lightning as pl


def is_terminal(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr, where bars draw) is an interactive terminal."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def epoch_label(epoch_index: int, max_epochs: int | None) -> str:
    """``"Epoch 8/8"`` for Lightning's 0-based ``epoch_index`` 7 of 8: humans count from 1."""
    return (
        f"Epoch {epoch_index + 1}/{max_epochs}"
        if max_epochs and max_epochs > 0
        else f"Epoch {epoch_index + 1}"
    )


class EpochProgress(pl.Callback):
    """One training bar per epoch, labelled ``Epoch N/M`` from 1, on a terminal only.

    Use with ``Trainer(enable_progress_bar=False, callbacks=[EpochProgress()])``.
    """

    def __init__(self, stream: IO[str] | None = None, force: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = is_terminal(self.stream) if force is None else force
        self._bar: Any = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        total = trainer.num_training_batches
        self._bar = tqdm(
            total=None if total == float("inf") else int(total),
            desc=epoch_label(trainer.current_epoch, trainer.max_epochs),
            unit="batch",
            file=self.stream,
            leave=True,
            dynamic_ncols=True,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "item"):
            self._bar.set_postfix(loss=f"{float(loss.item()):.4f}", refresh=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.on_train_epoch_end(trainer, pl_module)
