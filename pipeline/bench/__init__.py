"""Accuracy benchmarks run through the product's own bundle configs (``aamct bench ...``).

:mod:`pipeline.bench.medmnist` runs the MedMNIST v2 3D protocol; the speed benchmarks live in ``benchmarks/``.
"""

__all__: list[str] = []
