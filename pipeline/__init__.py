"""aamct: a MONAI-centric pipeline for 3D CT classification.

Stages (one sub-package each): ``data`` (ingestion, manifests, splits, demo cohort), ``transforms``,
``networks`` (AAM-ResNet-3D and baselines), ``training``, ``inference``, ``evaluation``, ``sharing``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
