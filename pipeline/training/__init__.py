"""Training: the helpers the bundle's ``train.json`` points into, plus distillation.

The training loop itself is MONAI's (``SupervisedTrainer`` / ``SupervisedEvaluator`` and their handlers, driven by
``python -m monai.bundle run training``); the modules here hold only what MONAI lacks:

* :mod:`pipeline.training.preflight`: resolve the datalist, check every case and the run settings before any
  training starts; user mistakes end the run with one line (``SystemExit``), unreadable cases are dropped with a
  warning.
* :mod:`pipeline.training.datasets`: :class:`~pipeline.training.datasets.SkipFailedCases`, a dataset wrapper that
  survives a case failing to load at run time.
* :mod:`pipeline.training.checkpoints`: atomic best / last checkpoints that can be resumed.
* :mod:`pipeline.training.handlers`: the per-epoch summary line and history, and a resumable early-stop handler.
* :mod:`pipeline.training.distillation`, :mod:`pipeline.training.cascade`: knowledge distillation.
* :mod:`pipeline.training.crossval`: the runs of ``aamct crossval`` (every network on every fold through the
  bundle, resumable) and their pooled out-of-fold predictions; the report over them is evaluation's, handed in.

Submodules are imported explicitly (``pipeline.training.preflight``); nothing is imported here, so loading one
does not pull in the others.
"""

from __future__ import annotations

__all__: list[str] = []
