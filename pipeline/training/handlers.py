"""Training handlers MONAI lacks: a one-line-per-epoch summary with timing, and an early stop that can be resumed.

* :class:`EpochSummary`: MONAI's ``StatsHandler`` logs the loss of every iteration and the validation metrics in
  separate lines, with no timing. A user watching a 100-epoch run wants one line per epoch::

      epoch 3/100: loss 0.1423, val_auc 0.9612 (best 0.9612 at epoch 3), 41.2 s (train 35.0 s, 2.9 volumes/s, data wait 12%)

  It also records the step time spent waiting on the DataLoader (ignite's ``GET_BATCH_STARTED`` ->
  ``GET_BATCH_COMPLETED``), the figure that shows whether caching works, and keeps a JSON history of every epoch.
* :class:`ResumableEarlyStopHandler`: MONAI's ``EarlyStopHandler`` with ``state_dict`` / ``load_state_dict``, so its
  patience counter and best score are saved in the last checkpoint and survive a resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler, from_engine

from pipeline.io import write_json_atomic

__all__ = ["EpochSummary", "ResumableEarlyStopHandler"]

logger = logging.getLogger(__name__)


class EpochSummary:
    """Log one line per training epoch (loss, validation metric, timing) and keep a JSON history.

    Attach it to the trainer after MONAI's ``ValidationHandler`` (the bundle lists it later in ``train_handlers``),
    so the validation of the epoch has run when the line is written.

    Args:
        evaluator: the validation engine whose ``state.metrics[metric_name]`` is reported (``None``: no metric).
        metric_name: the validation metric to report (the evaluator's key metric, ``val_auc`` in the bundle).
        history_path: JSON file rewritten (atomically) after every epoch; ``None`` keeps the history in memory only.
        loss_transform: how to get the loss out of ``engine.state.output`` (MONAI's trainer output).

    Attributes:
        history: one dict per epoch: ``epoch, loss, <metric_name>, best_<metric_name>, best_epoch, epoch_seconds,
            train_seconds, data_wait_seconds, data_wait_share, volumes, volumes_per_second``.
    """

    def __init__(
        self,
        *,
        evaluator: Engine | None = None,
        metric_name: str = "val_auc",
        history_path: str | os.PathLike | None = None,
        loss_transform: Callable[[Any], Any] = from_engine(["loss"], first=True),
    ) -> None:
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.history_path = Path(history_path) if history_path is not None else None
        self.loss_transform = loss_transform
        self.history: list[dict[str, Any]] = []
        self.resumed_at: list[int] = []
        self._first_epoch = True
        self._reset_epoch()

    def attach(self, engine: Engine) -> None:
        """Register on the trainer's epoch, batch and iteration events."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_requested)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_received)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _reset_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        self._last_iteration_end = self._epoch_start
        self._request_time = 0.0
        self._data_wait = 0.0
        self._volumes = 0
        self._loss_sum = 0.0
        self._loss_count = 0

    def _epoch_started(self, engine: Engine) -> None:
        if self._first_epoch:
            # the last checkpoint (if any) is loaded at STARTED, so the epoch seen here tells whether this is a resume
            self._first_epoch = False
            self._start_history(engine.state.epoch)
        self._reset_epoch()

    def _start_history(self, epoch: int) -> None:
        if epoch > 1:
            logger.info("resumed from the last checkpoint: continuing at epoch %d", epoch)
            if self.history_path is not None and self.history_path.is_file():
                saved = json.loads(self.history_path.read_text(encoding="utf-8"))
                self.history = [row for row in saved.get("epochs", []) if int(row["epoch"]) < epoch]
                self.resumed_at = [int(e) for e in saved.get("resumed_at", []) if int(e) < epoch]
            self.resumed_at.append(epoch)
        else:
            self.history, self.resumed_at = [], []

    def _batch_requested(self, engine: Engine) -> None:
        self._request_time = time.perf_counter()

    def _batch_received(self, engine: Engine) -> None:
        self._data_wait += time.perf_counter() - self._request_time
        batch = engine.state.batch
        images = batch.get("image") if isinstance(batch, Mapping) else None
        self._volumes += len(images) if images is not None else 1

    def _iteration_completed(self, engine: Engine) -> None:
        self._last_iteration_end = time.perf_counter()
        loss = self.loss_transform(engine.state.output)
        if isinstance(loss, (tuple, list)):  # from_engine gives a 1-tuple for an undecollated dict output
            loss = loss[0]
        value = float(loss.item() if hasattr(loss, "item") else loss)
        if math.isfinite(value):
            self._loss_sum += value
            self._loss_count += 1

    def _epoch_completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        train_seconds = self._last_iteration_end - self._epoch_start
        metric = None
        if self.evaluator is not None and self.metric_name in self.evaluator.state.metrics:
            metric = float(self.evaluator.state.metrics[self.metric_name])
        scored = [row for row in self.history if row.get(self.metric_name) is not None]
        if metric is not None and math.isfinite(metric):
            scored.append({"epoch": engine.state.epoch, self.metric_name: metric})
        best = max(scored, key=lambda row: row[self.metric_name], default=None)
        row = {
            "epoch": int(engine.state.epoch),
            "loss": self._loss_sum / self._loss_count if self._loss_count else None,
            self.metric_name: metric,
            f"best_{self.metric_name}": best[self.metric_name] if best else None,
            "best_epoch": int(best["epoch"]) if best else None,
            "epoch_seconds": now - self._epoch_start,
            "train_seconds": train_seconds,
            "data_wait_seconds": self._data_wait,
            "data_wait_share": self._data_wait / train_seconds if train_seconds > 0 else None,
            "volumes": self._volumes,
            "volumes_per_second": self._volumes / train_seconds if train_seconds > 0 else None,
        }
        self.history.append(row)
        logger.info(self._format(row, engine.state.max_epochs))
        if self.history_path is not None:
            write_json_atomic(self.history_path, {"epochs": self.history, "resumed_at": self.resumed_at})

    def _completed(self, engine: Engine) -> None:
        best = self.history[-1] if self.history else None
        if best is not None and best.get("best_epoch") is not None:
            logger.info(
                "training finished after epoch %d: best %s %.4f at epoch %d",
                engine.state.epoch,
                self.metric_name,
                best[f"best_{self.metric_name}"],
                best["best_epoch"],
            )

    def _format(self, row: Mapping[str, Any], max_epochs: int | None) -> str:
        parts = [f"epoch {row['epoch']}/{max_epochs}:"]
        parts.append(f"loss {row['loss']:.4f}," if row["loss"] is not None else "loss n/a,")
        metric = row[self.metric_name]
        if metric is not None:
            best = row[f"best_{self.metric_name}"]
            best_text = f" (best {best:.4f} at epoch {row['best_epoch']})" if best is not None else ""
            parts.append(f"{self.metric_name} {metric:.4f}{best_text},")
        rate = row["volumes_per_second"]
        share = row["data_wait_share"]
        parts.append(
            f"{row['epoch_seconds']:.1f} s (train {row['train_seconds']:.1f} s"
            + (f", {rate:.2f} volumes/s" if rate is not None else "")
            + (f", data wait {100 * share:.0f}%" if share is not None else "")
            + ")"
        )
        return " ".join(parts)


class ResumableEarlyStopHandler(EarlyStopHandler):
    """MONAI's ``EarlyStopHandler`` whose patience counter and best score can be saved and restored.

    Same arguments as :class:`monai.handlers.EarlyStopHandler`. ``state_dict`` / ``load_state_dict`` delegate to
    the ignite ``EarlyStopping`` it wraps, which exists once a trainer is set (in ``__init__`` or ``set_trainer``).
    """

    def state_dict(self) -> dict[str, Any]:
        """The wrapped ``EarlyStopping`` state (``counter``, ``best_score``); empty before a trainer is set."""
        if self._handler is None:
            return {}
        state = dict(self._handler.state_dict())
        # metrics often arrive as numpy scalars, which torch.load(weights_only=True) (CheckpointLoader) refuses
        if state.get("best_score") is not None:
            state["best_score"] = float(state["best_score"])
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            RuntimeError: if no trainer has been set yet.
        """
        if self._handler is None:
            raise RuntimeError("set the trainer (set_trainer) before restoring the early-stop state")
        if state_dict:
            self._handler.load_state_dict(state_dict)
