"""AtomicCheckpointSaver: best-by-metric and every-epoch checkpoints that MONAI's CheckpointLoader reads back."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from pipeline.training.checkpoints import AtomicCheckpointSaver, checkpoint_epoch, collect_state


def _evaluator(scores):
    """An engine whose epoch e reports metric ``auc`` = scores[e - 1]."""
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(engine):
        engine.state.metrics["auc"] = scores[engine.state.epoch - 1]

    return engine


def test_best_saver_writes_only_on_improvement_as_a_plain_state_dict(tmp_path):
    network = torch.nn.Linear(3, 2)
    saver = AtomicCheckpointSaver(
        save_path=tmp_path / "m" / "model.pt", save_dict={"model": network}, metric_name="auc"
    )
    evaluator = _evaluator([0.6, 0.9, 0.8, float("nan")])
    saved_weights = {}
    saver.attach(evaluator)  # after the metric, before the snapshot below

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _snapshot(engine):
        saved_weights[engine.state.epoch] = torch.load(tmp_path / "m" / "model.pt", weights_only=True)["weight"].clone()
        with torch.no_grad():
            network.weight.add_(1.0)  # the next epoch's network differs

    evaluator.run([0], max_epochs=4)
    assert saver.state_dict() == {"best_metric": 0.9, "best_epoch": 2}
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}  # what MONAI bundles expect in models/model.pt
    torch.testing.assert_close(state["weight"], saved_weights[2])
    torch.testing.assert_close(saved_weights[3], saved_weights[2])  # 0.8 and NaN did not overwrite
    assert not list((tmp_path / "m").glob(".*"))  # no temporary files left behind


def test_later_ties_replace_the_best_only_when_asked(tmp_path):
    for keep_later_ties, expected in ((False, 2), (True, 4)):
        saver = AtomicCheckpointSaver(
            save_path=tmp_path / str(keep_later_ties) / "model.pt",
            save_dict={"model": torch.nn.Linear(3, 2)},
            metric_name="auc",
            keep_later_ties=keep_later_ties,
        )
        evaluator = _evaluator([0.6, 1.0, 0.9, 1.0, 0.95])
        saver.attach(evaluator)
        evaluator.run([0], max_epochs=5)
        assert saver.state_dict() == {"best_metric": 1.0, "best_epoch": expected}


def test_last_checkpoint_round_trips_through_monai_checkpoint_loader(tmp_path):
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    best = AtomicCheckpointSaver(save_path=tmp_path / "model.pt", save_dict={"model": network}, metric_name="auc")
    best.load_state_dict({"best_metric": 0.75, "best_epoch": 3})

    def step(engine, batch):
        optimizer.zero_grad()
        network(torch.ones(1, 3)).sum().backward()
        optimizer.step()

    trainer = Engine(step)
    save_dict = {"network": network, "optimizer": optimizer, "trainer": trainer, "best_checkpoint": best}
    last = AtomicCheckpointSaver(save_path=tmp_path / "checkpoint_last.pt", save_dict=save_dict)
    last.attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    assert checkpoint_epoch(tmp_path / "checkpoint_last.pt") == 2

    network2 = torch.nn.Linear(3, 2)
    optimizer2 = torch.optim.AdamW(network2.parameters(), lr=1e-3)
    best2 = AtomicCheckpointSaver(save_path=tmp_path / "model.pt", save_dict={"model": network2}, metric_name="auc")
    trainer2 = Engine(lambda engine, batch: None)
    load_dict = {"network": network2, "optimizer": optimizer2, "trainer": trainer2, "best_checkpoint": best2}
    CheckpointLoader(load_path=str(tmp_path / "checkpoint_last.pt"), load_dict=load_dict).attach(trainer2)
    trainer2.run([0, 1], max_epochs=3)
    assert trainer2.state.epoch == 3
    torch.testing.assert_close(network2.weight, network.weight)
    assert int(optimizer2.state_dict()["state"][0]["step"]) == 4  # AdamW's step counter came back
    assert best2.state_dict() == {"best_metric": 0.75, "best_epoch": 3}


def test_collect_state_unwraps_data_parallel():
    network = torch.nn.Linear(2, 2)
    state = collect_state({"model": torch.nn.DataParallel(network)})
    assert set(state) == {"weight", "bias"}
    both = collect_state({"a": network, "b": network})
    assert set(both) == {"a", "b"}
    assert math.isinf(AtomicCheckpointSaver(save_path="x.pt", save_dict={"m": network}).best_metric)
