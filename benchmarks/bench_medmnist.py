"""MedMNIST v2 3D accuracy benchmark (issue 9): the command of :mod:`benchmarks.medmnist`.

Run from the repository root (``make bench`` runs it among the others)::

    .venv/bin/python -m benchmarks.bench_medmnist [--npz ../shared/data/medmnist/adrenalmnist3d.npz] [--quick]
    .venv/bin/python -m benchmarks.bench_medmnist --models --ablation --ablation-network aam_student_small

The protocol (train / select on val / report test through the bundle's configs) is :mod:`benchmarks.medmnist`; this
module holds its options and the ``main(argv)`` every benchmark exposes, so ``benchmarks.run_all`` runs it like the
others. Results: ``benchmarks/results/medmnist_<npz stem>.json`` and ``.md``. There is no ``aamct`` subcommand for
it: benchmarks measure a checkout (its bundle configs, its ``benchmarks/results``), and the installed package does not
import ``benchmarks``.
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

from benchmarks.medmnist import (  # noqa: E402
    DEFAULT_MODELS,
    DEFAULT_NPZ,
    DEFAULT_RESULTS_DIR,
    MedMNISTSettings,
    default_work_dir,
    run_medmnist,
    selected_ablations,
)
from pipeline.errors import UserError  # noqa: E402

__all__ = ["add_medmnist_arguments", "main", "settings_from_args"]

_PROG = "python -m benchmarks.bench_medmnist"


def add_medmnist_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the MedMNIST benchmark's options to ``parser``.

    Args:
        parser: the parser to extend.

    Returns:
        The same parser.
    """
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="MedMNIST 3D npz file (default: %(default)s)")
    parser.add_argument(
        "--models", nargs="*", default=list(DEFAULT_MODELS), help="registry names (none: only the --ablation runs)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: %(default)s)")
    parser.add_argument(
        "--seed-list",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="exactly these seeds instead of 0..N-1 (e.g. one more seed of models measured before)",
    )
    parser.add_argument("--epochs", type=int, default=8, help="maximum epochs per training (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=8, help="early-stopping patience (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument(
        "--roi-size", type=int, nargs=3, default=None, help="network input (default: the volumes' size, at least 32)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N cases per split (smoke runs)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    parser.add_argument("--n-resamples", type=int, default=200, help="bootstrap resamples of the reports")
    parser.add_argument("--ablation", action="store_true", help="also train the AAM-ResNet-50 ablation variants")
    parser.add_argument(
        "--ablation-network", default="aam_resnet50", help="the AAM-ResNet the ablation varies (default: %(default)s)"
    )
    parser.add_argument(
        "--ablation-seeds", type=int, default=None, help="seeds 0..N-1 of the ablation variants (default: --seeds)"
    )
    parser.add_argument(
        "--ablation-variants",
        nargs="+",
        default=None,
        metavar="WORD",
        help="only the ablation variants whose names contain one of these words, e.g. placement (default: all)",
    )
    parser.add_argument(
        "--variant-set",
        choices=("ablation", "probes"),
        default="ablation",
        help="the variants --ablation trains: the component ablation, or the AAM variant probes of issue 14 "
        "(selected on val) (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher", default="aam_resnet50", help="distillation teacher of aam_student (default: %(default)s)"
    )
    parser.add_argument(
        "--distill-weight",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a distill.json loss setting for the distilled student, e.g. attention_weight=100 or hint_weight=1 "
        "(repeatable; names: kd_weight, attention_weight, hint_weight, temperature, attention_source)",
    )
    parser.add_argument(
        "--width-multiplier",
        type=float,
        default=None,
        help="scale every network's width (AAM width, MONAI ResNet widen_factor) to fit a CPU budget",
    )
    parser.add_argument(
        "--distill-stages",
        nargs="+",
        default=["aam_student"],
        help="cascade after the --teacher, ending in aam_student (default: %(default)s)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="cosine",
        help="learning-rate schedule (default: %(default)s)",
    )
    parser.add_argument(
        "--student-scratch", action="store_true", help="also train aam_student from scratch (vs the distilled one)"
    )
    parser.add_argument("--name", default=None, help="results file stem (default: medmnist_<npz stem>)")
    parser.add_argument("--quick", action="store_true", help="smoke run: --limit 64 --epochs 1 --seeds 1")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="cohort, checkpoints, reports (default: runs/bench_medmnist, one folder per npz file and for --quick)",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="where the JSON/Markdown go")
    return parser


def settings_from_args(args: argparse.Namespace, *, command: str | None = None) -> MedMNISTSettings:
    """Turn parsed options into :class:`benchmarks.medmnist.MedMNISTSettings`.

    Args:
        args: options parsed by a parser built with :func:`add_medmnist_arguments`.
        command: the command line to record (default: this process's argv).

    Returns:
        The settings.

    Raises:
        UserError: for a non-positive seed count, epoch count, batch size or limit.
    """
    limit, epochs, seeds = args.limit, args.epochs, args.seeds
    if args.quick:
        limit, epochs, seeds = limit or 64, 1, 1
    for name, value in (("--seeds", seeds), ("--epochs", epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if not args.models and not args.ablation:
        raise UserError("nothing to run: give --models and/or --ablation")
    if args.distill_stages[-1] != "aam_student":
        raise UserError(f"--distill-stages must end in aam_student, got {' '.join(args.distill_stages)}")
    variants = None if args.ablation_variants is None else tuple(args.ablation_variants)
    selected_ablations(variants, variant_set=args.variant_set)  # an unknown word fails here, before any training
    distill_weights = _distill_weights(args.distill_weight)
    if limit is not None and limit < 4:
        raise UserError(f"--limit must be at least 4 (two cases of each class per split), got {limit}")
    return MedMNISTSettings(
        npz=args.npz,
        work_dir=args.work_dir or default_work_dir(args.npz, quick=args.quick),
        results_dir=args.results_dir,
        models=tuple(args.models),
        seeds=tuple(args.seed_list) if args.seed_list and not args.quick else tuple(range(seeds)),
        epochs=epochs,
        early_stop_patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        roi_size=tuple(args.roi_size) if args.roi_size else None,
        limit=limit,
        num_workers=args.num_workers,
        n_resamples=args.n_resamples,
        ablation=args.ablation,
        ablation_network=args.ablation_network,
        student_scratch=args.student_scratch,
        ablation_seeds=None if args.ablation_seeds is None else tuple(range(args.ablation_seeds)),
        ablation_variants=variants,
        distill_stages=tuple(args.distill_stages),
        variant_set=args.variant_set,
        teacher=args.teacher,
        distill_weights=distill_weights or None,
        width_multiplier=args.width_multiplier,
        lr_schedule=args.lr_schedule,
        name=args.name,
        command=command if command is not None else shlex.join([*_PROG.split(), *sys.argv[1:]]),
    )


_DISTILL_SETTINGS = {
    "kd_weight": float,
    "attention_weight": float,
    "hint_weight": float,
    "temperature": float,
    "attention_source": str,
}


def _distill_weights(pairs: list[str]) -> dict[str, object]:
    """``["attention_weight=100", ...]`` -> ``{"attention_weight": 100.0}`` (a bad pair is a one-line error)."""
    weights: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in _DISTILL_SETTINGS:
            raise UserError(
                f"--distill-weight {pair!r}: expected NAME=VALUE with NAME one of {', '.join(_DISTILL_SETTINGS)}"
            )
        try:
            weights[name] = _DISTILL_SETTINGS[name](value)
        except ValueError:
            raise UserError(f"--distill-weight {pair!r}: {value!r} is not a number") from None
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    """Run the MedMNIST benchmark; returns the exit status (2 for a user mistake, printed on one line)."""
    parser = add_medmnist_arguments(argparse.ArgumentParser(prog=_PROG))
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
