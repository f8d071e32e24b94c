"""MedMNIST v2 3D accuracy benchmark (issue 9), the ``benchmarks/`` face of ``aamct bench medmnist``.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_medmnist [--npz ../shared/data/medmnist/adrenalmnist3d.npz] [--quick]

Everything happens in :mod:`pipeline.bench.medmnist` (train / select on val / report test through the bundle's
configs); this module only gives it the ``main(argv)`` every benchmark exposes, so ``benchmarks.run_all`` runs it
like the others. Results: ``benchmarks/results/medmnist_<npz stem>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.bench.cli import add_medmnist_arguments, settings_from_args  # noqa: E402
from pipeline.bench.medmnist import run_medmnist  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the MedMNIST benchmark; returns the exit status (2 for a user mistake, printed on one line)."""
    parser = add_medmnist_arguments(argparse.ArgumentParser(prog="python -m benchmarks.bench_medmnist"))
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(
            args, command=shlex.join([".venv/bin/python", "-m", "benchmarks.bench_medmnist", *arguments])
        )
        result = run_medmnist(settings)
    except UserError as err:
        print(f"bench_medmnist: error: {err}", file=sys.stderr)
        return 2
    print(f"medmnist_{result['dataset']}: {result['wall_seconds']:.0f} s, results in {settings.results_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
