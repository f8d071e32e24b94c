"""EpochSummary (per-epoch line, timing, JSON history, resume) and ResumableEarlyStopHandler."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from ignite.engine import Engine, Events

from pipeline.training.handlers import EpochSummary, ResumableEarlyStopHandler


class _SlowLoader:
    """Two batches of 2 volumes, each handed out ``delay`` seconds after it is asked for (a slow DataLoader)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        for _ in range(2):
            time.sleep(self.delay)
            yield {"image": torch.zeros(2, 1, 4, 4, 4)}


def _trainer(losses, delay: float = 0.0):
    """A trainer whose output carries the next loss, over a loader that takes ``delay`` s per batch."""
    values = iter(losses)

    def step(engine, batch):
        return {"loss": torch.tensor(next(values))}

    return Engine(step), _SlowLoader(delay)


def _evaluator(aucs):
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.metrics = {}
    scores = iter(aucs)
    return evaluator, scores


def test_epoch_line_and_history(tmp_path, caplog):
    trainer, data = _trainer([0.5, 0.3, 0.2, 0.2], delay=0.02)
    evaluator, scores = _evaluator([0.7, 0.65])

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):  # what MONAI's ValidationHandler does before the summary runs
        evaluator.state.metrics["val_auc"] = next(scores)

    summary = EpochSummary(evaluator=evaluator, metric_name="val_auc", history_path=tmp_path / "history.json")
    summary.attach(trainer)
    with caplog.at_level(logging.INFO, logger="pipeline.training.handlers"):
        trainer.run(data, max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert lines[0].startswith("epoch 1/2: loss 0.4000, val_auc 0.7000 (best 0.7000 at epoch 1), ")
    assert lines[1].startswith("epoch 2/2: loss 0.2000, val_auc 0.6500 (best 0.7000 at epoch 1), ")
    assert "volumes/s" in lines[0] and "data wait" in lines[0]
    history = json.loads((tmp_path / "history.json").read_text())
    rows = history["epochs"]
    assert [row["epoch"] for row in rows] == [1, 2] and [row["volumes"] for row in rows] == [4, 4]
    assert rows[1]["best_val_auc"] == 0.7 and rows[1]["best_epoch"] == 1
    assert all(row["data_wait_seconds"] >= 0.04 for row in rows)  # two batches, each 20 ms late
    assert all(0 < row["data_wait_share"] <= 1 for row in rows)


def test_resumed_run_keeps_earlier_history(tmp_path, caplog):
    path = tmp_path / "history.json"
    earlier = [{"epoch": e, "val_auc": 0.5 + e / 10, "loss": 0.1} for e in (1, 2, 3)]
    path.write_text(json.dumps({"epochs": earlier, "resumed_at": []}))
    trainer, data = _trainer([0.1, 0.1])

    @trainer.on(Events.STARTED)
    def _restore(engine):  # what CheckpointLoader does: two epochs were completed
        engine.state.epoch, engine.state.iteration = 2, 4

    summary = EpochSummary(history_path=path)
    summary.attach(trainer)
    with caplog.at_level(logging.INFO, logger="pipeline.training.handlers"):
        trainer.run(data, max_epochs=3)
    history = json.loads(path.read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3]  # the stale epoch 3 row was replaced
    assert history["epochs"][2]["loss"] == pytest.approx(0.1) and history["resumed_at"] == [3]
    assert any("continuing at epoch 3" in r.getMessage() for r in caplog.records)


def test_early_stop_state_survives_a_resume():
    scores = iter([0.8, 0.7, 0.6])
    trainer = Engine(lambda engine, batch: None)
    handler = ResumableEarlyStopHandler(patience=3, score_function=lambda engine: next(scores), trainer=trainer)
    evaluator = Engine(lambda engine, batch: None)
    handler.attach(evaluator)
    evaluator.run([0], max_epochs=3)
    state = handler.state_dict()
    assert state["counter"] == 2 and state["best_score"] == 0.8 and isinstance(state["best_score"], float)

    resumed = ResumableEarlyStopHandler(patience=3, score_function=lambda engine: 0.5)
    assert resumed.state_dict() == {}
    resumed.set_trainer(trainer)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["counter"] == 2
    resumed(evaluator)  # a third epoch without improvement reaches the patience
    assert trainer.should_terminate
