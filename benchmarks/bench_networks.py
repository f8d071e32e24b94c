"""Network benchmark: parameters, FLOPs and CPU latency of every registry entry, plus the AAM fusion alternative.

Run ``.venv/bin/python -m benchmarks.bench_networks`` (about 5-10 minutes on 2 idle cores); writes
``benchmarks/results/networks.json``. For every entry of :func:`pipeline.networks.available` at input 1x1x64x128x128:

- ``params``: trainable + frozen parameter count (``in_channels=1, num_classes=2``);
- ``flops``: forward FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, 2 per
  multiply-add; norms, activations, pooling and the attention's elementwise products are not counted);
- ``latency_s``: wall-clock forward time in eval mode under ``torch.no_grad()`` with ``torch.set_num_threads(2)``,
  median of ``--repeats`` (>= 5) runs after ``--warmup`` runs; ``cpu_s`` is the matching process CPU time, less
  sensitive to other processes sharing the machine (the load average is recorded before and after);
- each figure's ratio to ``resnet50`` (MONAI's 3D ResNet-50, 46,163,010 parameters, with the stride-2 stem the
  registry uses); MONAI's default stride-1 stem is measured once more as ``monai_resnet50_default_stem``.

The fusion section measures the AAM fusion we chose (``product``: ``x * a_c * a_s``) against the alternative
(``sum``: ``x * a_c + x * a_s``): parameters, FLOPs and latency for the teacher and the student, and a quick accuracy
signal: ``aam_student_small`` trained with each fusion for ``--train-steps`` steps on AdrenalMNIST3D (28^3 padded to
32^3, real data from ../shared/data; skipped with a note where absent), test AUC and accuracy. One seed and a short
schedule: treat AUC differences below a few hundredths as noise.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.networks.nets import resnet50 as monai_resnet50
from sklearn.metrics import roc_auc_score
from torch.utils.flop_counter import FlopCounterMode

from pipeline.io import write_json_atomic
from pipeline.networks import available, build, network_spec

__all__ = ["main", "measure_network", "train_fusion_signal"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "networks.json"
ADRENAL_NPZ = (
    Path(os.environ.get("AAMCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "medmnist" / "adrenalmnist3d.npz"
)
REFERENCE = "resnet50"
THREADS = 2


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def _time_forward(model: torch.nn.Module, x: torch.Tensor, *, warmup: int, repeats: int) -> dict[str, Any]:
    wall: list[float] = []
    cpu: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            model(x)
            wall.append(time.perf_counter() - wall_start)
            cpu.append(time.process_time() - cpu_start)
    return {
        "latency_s": statistics.median(wall),
        "latency_min_s": min(wall),
        "latency_runs_s": [round(t, 4) for t in wall],
        "cpu_s": statistics.median(cpu),
    }


def measure_network(
    model: torch.nn.Module, *, input_shape: Sequence[int], warmup: int = 1, repeats: int = 5
) -> dict[str, Any]:
    """Parameters, FLOPs and CPU forward latency of one network.

    Args:
        model: the network (put in eval mode here).
        input_shape: ``(B, C, D, H, W)`` of the random input.
        warmup: untimed forward passes first.
        repeats: timed forward passes (the median is reported).

    Returns:
        ``{"params", "flops", "latency_s", "latency_min_s", "latency_runs_s", "cpu_s"}``.
    """
    model.eval()
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    return {
        "params": _count_params(model),
        "flops": _count_flops(model, x),
        **_time_forward(model, x, warmup=warmup, repeats=repeats),
    }


def _with_ratios(record: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    for key in ("params", "flops", "latency_s", "cpu_s"):
        record[f"{key}_ratio_to_{REFERENCE}"] = round(record[key] / reference[key], 4)
    return record


def _load_adrenal(path: Path) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    data = np.load(path)
    splits = {}
    for split in ("train", "test"):
        images = torch.from_numpy(data[f"{split}_images"].astype(np.float32) / 255.0)[:, None]
        # 28^3 is below the networks' 32-voxel minimum: centre the volumes in a 32^3 zero field
        images = torch.nn.functional.pad(images, (2, 2, 2, 2, 2, 2))
        splits[split] = (images, data[f"{split}_labels"].reshape(-1).astype(np.int64))
    return splits


def train_fusion_signal(
    fusion: str, splits: dict[str, tuple[torch.Tensor, np.ndarray]], *, steps: int, batch_size: int, seed: int
) -> dict[str, Any]:
    """Train ``aam_student_small`` with one fusion on AdrenalMNIST3D and score the test split.

    Args:
        fusion: ``"product"`` or ``"sum"``.
        splits: ``{"train": (images, labels), "test": (images, labels)}`` with images ``(N, 1, 32, 32, 32)``.
        steps: optimisation steps (Adam, lr 1e-3, class-weighted cross-entropy, random flips).
        batch_size: volumes per step.
        seed: seed for weights, batch order and augmentation.

    Returns:
        Test AUC, accuracy at argmax, final training loss (mean of the last 10 steps), wall time.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = splits["train"]
    test_images, test_labels = splits["test"]
    labels = torch.from_numpy(train_labels)
    # about 3.6:1 normal:mass; weight the loss so the quick run does not settle on the majority class
    class_weights = (len(labels) / (2.0 * torch.bincount(labels, minlength=2).clamp(min=1))).float()
    model = build("aam_student_small", attention_fusion=fusion)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for _ in range(steps):
        index = torch.randint(len(labels), (batch_size,), generator=generator)
        batch = train_images[index]
        for axis in (2, 3, 4):
            flip = torch.rand(batch_size, generator=generator) < 0.5
            batch[flip] = batch[flip].flip(axis)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(batch), labels[index], weight=class_weights)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in test_images.split(64)])
    probability = torch.softmax(logits, 1)[:, 1].numpy()
    return {
        "test_auc": round(float(roc_auc_score(test_labels, probability)), 4),
        "test_accuracy": round(float((logits.argmax(1).numpy() == test_labels).mean()), 4),
        "final_train_loss": round(statistics.fmean(losses[-10:]), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_networks", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON to write (default: %(default)s)")
    parser.add_argument("--input-shape", type=int, nargs=5, default=(1, 1, 64, 128, 128), metavar="N")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes per network")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per network (>= 5)")
    parser.add_argument("--networks", nargs="*", default=None, help="registry names (default: all)")
    parser.add_argument("--skip-default-stem", action="store_true", help="do not time MONAI's stride-1 ResNet-50")
    parser.add_argument("--train-steps", type=int, default=100, help="steps per fusion variant (0: skip training)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the JSON; returns the exit status."""
    args = _parse_args(argv)
    torch.set_num_threads(THREADS)
    names = args.networks or available()
    if REFERENCE not in names:
        names = [REFERENCE, *names]
    for name in names:
        network_spec(name)  # fail early (UserError) on a misspelt name
    input_shape = tuple(args.input_shape)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "networks",
        "input_shape": list(input_shape),
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "flops_note": "FlopCounterMode: conv + matmul only, 2 FLOPs per multiply-add",
        "reference": f"{REFERENCE} (MONAI 3D ResNet-50, stride-2 stem)",
    }

    networks: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = network_spec(name)
        print(f"[networks] {name} ...", flush=True)
        record = measure_network(build(name), input_shape=input_shape, warmup=args.warmup, repeats=args.repeats)
        networks[name] = {"stem": spec.stem, "summary": spec.summary, **record}
    reference = networks[REFERENCE]
    result["networks"] = {name: _with_ratios(record, reference) for name, record in networks.items()}

    if not args.skip_default_stem:
        print("[networks] MONAI resnet50 with its default stride-1 stem ...", flush=True)
        default_stem = monai_resnet50(spatial_dims=3, n_input_channels=1, num_classes=2)
        record = measure_network(default_stem, input_shape=input_shape, warmup=args.warmup, repeats=args.repeats)
        record["stem"] = "7x7x7 conv stride 1 (MONAI default conv1_t_stride=1) + 3x3x3 max-pool stride 2"
        result["monai_resnet50_default_stem"] = _with_ratios(record, reference)

    fusion: dict[str, Any] = {
        "chosen": "product: AAM(x) = x * a_c * a_s",
        "alternative": "sum: AAM(x) = x * a_c + x * a_s",
        "cost": {},
    }
    for name in ("aam_resnet50", "aam_student"):
        for mode in ("product", "sum"):
            if mode == "product" and name in result["networks"]:
                # the registry default is the product fusion: same network, already measured above
                fusion["cost"][f"{name}/{mode}"] = result["networks"][name]
                continue
            print(f"[fusion] {name} {mode} ...", flush=True)
            model = build(name, attention_fusion=mode)
            record = measure_network(model, input_shape=input_shape, warmup=args.warmup, repeats=args.repeats)
            fusion["cost"][f"{name}/{mode}"] = _with_ratios(record, reference)
    if args.train_steps > 0 and ADRENAL_NPZ.is_file():
        splits = _load_adrenal(ADRENAL_NPZ)
        fusion["accuracy_signal"] = {
            "task": "AdrenalMNIST3D (28^3 padded to 32^3), train split -> test split (298 cases, 69 masses)",
            "network": "aam_student_small",
            "steps": args.train_steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "note": "one seed, short schedule: a sanity signal, not evidence; published 3D ResNet-18 test AUC 0.827",
        }
        for mode in ("product", "sum"):
            print(f"[fusion] training aam_student_small with {mode} fusion ...", flush=True)
            fusion["accuracy_signal"][mode] = train_fusion_signal(
                mode, splits, steps=args.train_steps, batch_size=args.batch_size, seed=args.seed
            )
    else:
        fusion["accuracy_signal"] = {"skipped": f"train steps 0 or {ADRENAL_NPZ} not found"}
    result["fusion"] = fusion
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    path = write_json_atomic(args.output, result)
    print(f"[networks] wrote {path} in {result['total_seconds']} s")
    for name, record in result["networks"].items():
        print(
            f"  {name:18s} params {record['params']:>11,d} ({record['params_ratio_to_resnet50']:.3f})"
            f"  GFLOPs {record['flops'] / 1e9:7.1f} ({record['flops_ratio_to_resnet50']:.3f})"
            f"  latency {record['latency_s']:.3f} s ({record['latency_s_ratio_to_resnet50']:.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
