"""Checkpoints written atomically: the best model by a validation metric, and the last epoch for resuming.

Why not MONAI's ``CheckpointSaver``: it writes through ignite's ``DiskSaver`` with ``atomic=False`` and, for a fixed
file name such as ``model.pt``, deletes the previous file *before* writing the new one, so a run killed at that
moment leaves no model at all; it also has no "one fixed file, overwritten every epoch" mode (its interval saves are
``checkpoint_epoch=N.pt`` files), and its best-metric tracking only survives a resume if that state is stored
inside ``model.pt`` itself, which then stops being a plain state dict. :class:`AtomicCheckpointSaver` keeps
MONAI's file format (one object -> its bare ``state_dict``, several -> a dict of state dicts, DDP wrappers
unwrapped, as ignite's ``Checkpoint`` does) so MONAI's ``CheckpointLoader`` and the bundle tooling read the files
unchanged, writes through :func:`pipeline.io.atomic_path`, and exposes ``state_dict`` / ``load_state_dict`` so
the best score is part of the last checkpoint and a resumed run does not overwrite a better ``model.pt``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from pipeline.io import atomic_path

__all__ = ["SELECTIONS", "AtomicCheckpointSaver", "checkpoint_epoch", "collect_state"]

#: which epoch a metric-tracking saver keeps: the best-scoring one, or the last one
SELECTIONS: tuple[str, ...] = ("best", "last")

logger = logging.getLogger(__name__)


def collect_state(save_dict: Mapping[str, Any]) -> Any:
    """The object written to disk for ``save_dict``, in ignite's ``Checkpoint`` layout.

    Args:
        save_dict: name -> object with ``state_dict()`` (network, optimizer, engine, handler).

    Returns:
        The bare ``state_dict()`` when ``save_dict`` holds one object (what ``model.pt`` of a MONAI bundle is),
        else ``{name: state_dict()}``.
    """
    states = {name: _unwrap(obj).state_dict() for name, obj in save_dict.items()}
    return next(iter(states.values())) if len(states) == 1 else states


def checkpoint_epoch(path: str | os.PathLike, key: str = "trainer") -> int:
    """Epochs completed according to a last checkpoint written with the trainer under ``key``.

    Args:
        path: the checkpoint file.
        key: the name the trainer engine was saved under.

    Returns:
        The trainer's completed epochs.

    Raises:
        KeyError: if the checkpoint holds no trainer state.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not isinstance(state.get(key), Mapping):
        raise KeyError(f"no {key!r} state in the checkpoint")
    engine_state = state[key]
    # ignite's Engine.state_dict stores either "epoch" or "iteration" (with "epoch_length"), not both
    if "epoch" in engine_state:
        return int(engine_state["epoch"])
    return int(engine_state["iteration"]) // int(engine_state["epoch_length"])


class AtomicCheckpointSaver:
    """Save ``save_dict`` to one fixed file at the end of every epoch, or only when a metric improves.

    Attach it to the trainer for a last-epoch checkpoint, or to the evaluator with ``metric_name`` for the best
    model (the evaluator's ``state.epoch`` is the trainer's epoch when run by MONAI's ``ValidationHandler``).
    In distributed training attach it on every rank: all ranks track the (synchronised) metric, only rank 0
    writes, as ignite's ``DiskSaver`` does.

    Args:
        save_path: the file to write (its folder is created).
        save_dict: name -> object with ``state_dict()``; one object is saved as its bare state dict.
        metric_name: save only when ``engine.state.metrics[metric_name]`` beats the best so far (higher is better);
            ``None`` saves every epoch.
        min_delta: an improvement must exceed the best by more than this.
        keep_later_ties: also save when the metric equals the best (MONAI ``CheckpointSaver``'s
            ``key_metric_greater_or_equal``): with a saturating metric (validation AUC 1.0 on a small fold) the
            checkpoint is then the latest, most trained, of the equally scored epochs rather than the first.
        selection: ``"best"`` (the file holds the epoch with the best metric) or ``"last"`` (the file holds the
            last epoch; the metric is still tracked, so ``best_metric`` / ``best_epoch`` keep their meaning). On a
            validation fold of 17 cases the best-scoring epoch is largely chance (the demo: seed 1 chose epoch 6,
            test AUC 0.873, where the annealed last epoch scored 0.981), so a recipe whose schedule anneals to the
            end can take its last epoch instead.

    Example (what ``train.json`` does)::

        best = AtomicCheckpointSaver(save_path="run/models/model.pt", save_dict={"model": net}, metric_name="val_auc")
        best.attach(evaluator)
        last = AtomicCheckpointSaver(
            save_path="run/models/checkpoint_last.pt",
            save_dict={"network": net, "optimizer": opt, "trainer": trainer, "best_checkpoint": best},
        )
        last.attach(trainer)
    """

    def __init__(
        self,
        *,
        save_path: str | os.PathLike,
        save_dict: Mapping[str, Any],
        metric_name: str | None = None,
        min_delta: float = 0.0,
        keep_later_ties: bool = False,
        selection: str = "best",
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.selection = selection
        self.save_path = Path(save_path)
        self.save_dict = dict(save_dict)
        self.metric_name = metric_name
        self.min_delta = float(min_delta)
        self.keep_later_ties = bool(keep_later_ties)
        self.best_metric = -math.inf
        self.best_epoch = 0

    def attach(self, engine: Engine) -> None:
        """Save at every ``EPOCH_COMPLETED`` of ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the checkpoint if due (every epoch, or on an improved metric)."""
        if self.metric_name is not None:
            score = float(engine.state.metrics[self.metric_name])
            if not math.isfinite(score):
                logger.warning(
                    "%s is %s at epoch %d; %s not updated",
                    self.metric_name,
                    score,
                    engine.state.epoch,
                    self.save_path.name,
                )
                return
            tie = self.keep_later_ties and self.best_epoch > 0 and score == self.best_metric
            improved = score > self.best_metric + self.min_delta or tie
            if improved:
                self.best_metric, self.best_epoch = score, int(engine.state.epoch)
            if not improved and self.selection == "best":
                return
        if idist.get_rank() != 0:
            return
        state = collect_state(self.save_dict)
        with atomic_path(self.save_path) as tmp:
            torch.save(state, tmp)
        if self.metric_name is not None and self.selection == "last":
            logger.debug("saved %s at epoch %d (the last epoch is kept)", self.save_path, engine.state.epoch)
        elif self.metric_name is not None:
            logger.info(
                "new best %s %.4f at epoch %d: saved %s",
                self.metric_name,
                self.best_metric,
                self.best_epoch,
                self.save_path,
            )
        else:
            logger.debug("saved %s at epoch %d", self.save_path, engine.state.epoch)

    def state_dict(self) -> dict[str, float | int]:
        """The best score so far and its epoch (for the last checkpoint, so a resume keeps them)."""
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best_metric = float(state_dict["best_metric"])
        self.best_epoch = int(state_dict["best_epoch"])


def _unwrap(obj: Any) -> Any:
    # DistributedDataParallel / DataParallel: save the wrapped module, so keys carry no "module." prefix and the
    # file loads into a plain network (ignite's Checkpoint does the same)
    if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return obj.module
    return obj
