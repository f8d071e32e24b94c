"""Network benchmark: parameters, FLOPs and CPU latency of every registry entry, the AAM's profile and its goals.

Run ``.venv/bin/python -m benchmarks.bench_networks`` (a few minutes on 2 idle cores); writes
``benchmarks/results/networks.json``. At input 1x1x64x128x128 (batch 1, as whole-volume inference runs):

- ``networks``: every entry of :func:`pipeline.networks.available` (plus MONAI's ResNet-34, the same-depth peer of
  ``aam_resnet34``, which the registry does not list) with ``params``, ``flops`` (``FlopCounterMode``: convolutions
  and matmuls, 2 per multiply-add; norms, activations, pooling and the attention's elementwise products are not
  counted) and two latencies:

  * ``eager``: the network as training builds it, eval mode under ``torch.no_grad()``;
  * ``deployed``: :func:`pipeline.networks.optimized_for_inference` (TorchScript, frozen, PyTorch's
    ``optimize_for_inference``: every convolution through oneDNN, norms folded), the CPU inference form.

  Timings are **interleaved**: every round times each network once, in turn, so all networks see the same machine
  load; ``--repeats`` rounds after ``--warmup`` untimed ones. Reported: median and minimum wall seconds with
  ``torch.set_num_threads(--threads)`` (default 2), the matching process CPU seconds, the load average before and
  after, each figure's ratio to ``resnet50`` (MONAI's 3D ResNet-50 with the registry's stride-2 stem) and to the
  network's same-depth peer (``aam_resnet18`` -> ``resnet18``, ``aam_resnet34`` -> ``resnet34``, ``aam_resnet50`` ->
  ``resnet50``).
- ``paper_form``: ``aam_resnet18`` / ``aam_resnet50`` / ``aam_student`` built in the paper's form
  (:data:`pipeline.networks.PAPER_FORM`: product fusion, full dilated ASPP at full resolution in every unit), timed in
  the same rounds, so that the cost of the cheap spatial branch is a ratio measured in one run.
- ``goals`` (issue 14): AAM-ResNet latency <= 1.25x the same-depth ResNet's, ``aam_student`` <= 0.3x ResNet-50's
  latency and <= 31 % of its parameters; each with the measured ratios (eager and deployed, median and minimum) and
  ``met_by_default_inference``: met in the form the default inference config scores with on the CPU
  (``default_inference_form``: inference.json's ``cpu_form``, ``deployed``).
- ``profile``: where an AAM-ResNet-50's eager CPU time goes (``torch.profiler``, ``--threads`` threads): share of the
  forward spent inside the attention modules (forward hooks) and in their spatial branches, the top operators by
  self CPU time, and how much convolution time ran through each PyTorch kernel (oneDNN or the native slow ones), for
  the paper form, the registry default and MONAI's ResNet-50.
- ``channels_last_3d``: whether the channels-last memory format pays on this CPU (eager ``aam_resnet18`` and
  ``resnet18`` in both formats, interleaved).
- ``monai_resnet50_default_stem``: MONAI's own stride-1 stem, once (``--skip-default-stem`` leaves it out).

Timings taken on a shared machine are indicative: compare the ratios (measured in one run) rather than the seconds,
and read the minimum beside the median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import torch
from monai.networks.nets import resnet50 as monai_resnet50
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.store import write_result_json
from pipeline.inference.sliding import DEFAULT_CPU_FORM
from pipeline.networks import PAPER_FORM, attention_modules, available, build, network_spec, optimized_for_inference
from pipeline.networks.baselines import monai_resnet

__all__ = ["GOALS", "PEERS", "interleaved_latency", "main", "profile_network"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "networks.json"
REFERENCE = "resnet50"
#: the same-depth peer of every AAM-ResNet (``resnet34`` is built here: the registry does not list it)
PEERS: dict[str, str] = {"aam_resnet18": "resnet18", "aam_resnet34": "resnet34", "aam_resnet50": "resnet50"}
PAPER_NETWORKS: tuple[str, ...] = ("aam_resnet18", "aam_resnet50", "aam_student")
#: the form the default inference path scores with on the CPU (``cpu_form`` of bundle/configs/inference.json reads
#: pipeline.inference.sliding.DEFAULT_CPU_FORM; Grad-CAM and attention maps always run the eager network)
DEFAULT_INFERENCE_FORM = (
    f"{DEFAULT_CPU_FORM}: bundle/configs/inference.json's cpu_form, the form pipeline.inference scores with on the CPU "
    "(pipeline.inference.sliding.scoring_form; Grad-CAM and the attention maps run the eager network)"
)
#: issue 14's goals: (network, peer, figure, bound)
GOALS: tuple[tuple[str, str, str, float], ...] = (
    ("aam_resnet18", "resnet18", "latency", 1.25),
    ("aam_resnet50", "resnet50", "latency", 1.25),
    ("aam_student", "resnet50", "latency", 0.30),
    ("aam_student", "resnet50", "params", 0.31),
)


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def interleaved_latency(
    models: Mapping[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, *, warmup: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Time every model once per round, in turn, for ``repeats`` rounds (after ``warmup`` untimed rounds).

    Args:
        models: name -> callable taking ``x`` (a network in eval mode, or a TorchScript module).
        x: the input.
        warmup: untimed rounds first.
        repeats: timed rounds.

    Returns:
        name -> ``{"median_s", "min_s", "runs_s", "cpu_median_s"}``.
    """
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                model(x)
                wall[name].append(time.perf_counter() - wall_start)
                cpu[name].append(time.process_time() - cpu_start)
    return {
        name: {
            "median_s": statistics.median(wall[name]),
            "min_s": min(wall[name]),
            "runs_s": [round(t, 4) for t in wall[name]],
            "cpu_median_s": statistics.median(cpu[name]),
        }
        for name in models
    }


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if not value or not reference else round(value / reference, 4)


def _conv_kernel(name: str) -> str | None:
    if name == "aten::mkldnn_convolution":
        return "oneDNN (mkldnn_convolution)"
    if name in ("aten::slow_conv3d_forward", "aten::slow_conv_dilated3d", "aten::slow_conv3d"):
        return f"native slow ({name.removeprefix('aten::')})"
    return None


def profile_network(model: torch.nn.Module, x: torch.Tensor, *, top: int = 8) -> dict[str, Any]:
    """Where one eager forward's CPU time goes: attention modules, spatial branches, operators, conv kernels.

    Args:
        model: the network (eval mode is set here).
        x: the input.
        top: how many operators to list.

    Returns:
        ``{"forward_s", "attention_s", "attention_share", "spatial_branch_s", "spatial_branch_share", "top_ops",
        "conv_kernels"}``; the shares are of the hooked forward's wall time, the operators' of profiled self CPU time.
    """
    model.eval()
    spent = {"attention": 0.0, "spatial": 0.0}
    started: dict[int, float] = {}
    handles = []

    def pre(module: torch.nn.Module, _inputs: Any) -> None:
        started[id(module)] = time.perf_counter()

    def post_for(kind: str) -> Callable[..., None]:
        def post(module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
            spent[kind] += time.perf_counter() - started.pop(id(module))

        return post

    for aam in attention_modules(model):
        handles += [aam.register_forward_pre_hook(pre), aam.register_forward_hook(post_for("attention"))]
        if aam.spatial is not None:
            handles += [
                aam.spatial.register_forward_pre_hook(pre),
                aam.spatial.register_forward_hook(post_for("spatial")),
            ]
    with torch.no_grad():
        model(x)  # warm-up
        spent.update(attention=0.0, spatial=0.0)
        forward_start = time.perf_counter()
        model(x)
        forward_s = time.perf_counter() - forward_start
    for handle in handles:
        handle.remove()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    kernels: dict[str, dict[str, float]] = {}
    for event in events:
        kernel = _conv_kernel(event.key)
        if kernel is not None:
            entry = kernels.setdefault(kernel, {"calls": 0, "self_cpu_s": 0.0})
            entry["calls"] += event.count
            entry["self_cpu_s"] += event.self_cpu_time_total / 1e6
    for entry in kernels.values():
        entry["share_of_cpu"] = round(entry["self_cpu_s"] * 1e6 / total_us, 4)
    return {
        "attention_placement": getattr(model, "attention_placement", None),
        "forward_s": round(forward_s, 4),
        "attention_s": round(spent["attention"], 4),
        "attention_share": round(spent["attention"] / forward_s, 4),
        "spatial_branch_s": round(spent["spatial"], 4),
        "spatial_branch_share": round(spent["spatial"] / forward_s, 4),
        "top_ops": [
            {
                "op": e.key,
                "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4),
                "share": round(e.self_cpu_time_total / total_us, 4),
                "calls": e.count,
            }
            for e in ranked
        ],
        "conv_kernels": kernels,
    }


def _profile_finding(profiles: Mapping[str, Mapping[str, Any]]) -> str:
    """One paragraph from the measured profile (every number in it comes from ``profiles``)."""
    paper, default = profiles.get("aam_resnet50 (paper form)", {}), profiles.get("aam_resnet50", {})

    def slow_share(entry: Mapping[str, Any]) -> float:
        return sum(
            k["share_of_cpu"] for name, k in entry.get("conv_kernels", {}).items() if name.startswith("native slow")
        )

    if not paper or not default:
        return "profile incomplete"
    return (
        f"Paper form: {paper['attention_share']:.0%} of the AAM-ResNet-50's eager forward is spent inside the AAMs, "
        f"{paper['spatial_branch_share']:.0%} in their spatial branches (full dilated 3x3x3 convolutions at full "
        f"resolution); {slow_share(paper):.0%} of its CPU time runs in PyTorch's native slow convolution kernels, "
        "which the CPU dispatcher picks at batch 1 for ungrouped convolutions on small maps "
        f"(slow_conv_dilated3d for every dilated one). Registry default (depthwise dilated convolutions at half "
        f"resolution, AAM placement {default.get('attention_placement')!r}): attention "
        f"{default['attention_share']:.0%}, spatial branches "
        f"{default['spatial_branch_share']:.0%}, native slow kernels {slow_share(default):.0%} (the backbone's own "
        f"small-map convolutions; MONAI's ResNet-50: {slow_share(profiles.get('resnet50', {})):.0%}). The deployed "
        "form (optimize_for_inference) runs every convolution through oneDNN."
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_networks", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON to write (default: %(default)s)")
    parser.add_argument("--input-shape", type=int, nargs=5, default=(1, 1, 64, 128, 128), metavar="N")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds, >= 5 (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--networks", nargs="*", default=None, help="registry names (default: all)")
    parser.add_argument("--skip-default-stem", action="store_true", help="do not time MONAI's stride-1 ResNet-50")
    parser.add_argument("--skip-profile", action="store_true", help="no torch.profiler section")
    parser.add_argument("--skip-deployed", action="store_true", help="eager latencies only")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    return args


def _goals(records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for network, peer, figure, bound in GOALS:
        if network not in records or peer not in records:
            continue
        row: dict[str, Any] = {"goal": f"{network} {figure} <= {bound}x {peer}", "bound": bound}
        if figure == "params":
            ratio = _ratio(records[network]["params"], records[peer]["params"])
            row.update(ratio=ratio, met=ratio is not None and ratio <= bound)
        else:
            for form in ("eager", "deployed"):
                for stat in ("median_s", "min_s"):
                    mine, theirs = records[network].get(form, {}), records[peer].get(form, {})
                    row[f"{form}_{stat.removesuffix('_s')}_ratio"] = _ratio(mine.get(stat), theirs.get(stat))
            measured = [row.get("eager_median_ratio"), row.get("deployed_median_ratio")]
            row["met_eager"] = measured[0] is not None and measured[0] <= bound
            row["met_deployed"] = measured[1] is not None and measured[1] <= bound
            # what a user gets without opting in: the form the default inference config scores with
            row["met_by_default_inference"] = row["met_deployed" if DEFAULT_CPU_FORM == "deployed" else "met_eager"]
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the JSON; returns the exit status."""
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(args.networks or available())
    for name in names:
        network_spec(name)  # fail early (UserError) on a misspelt name
    for needed in [REFERENCE, *(PEERS.get(n) for n in names if n in PEERS)]:
        if needed and needed not in names:
            names.append(needed)
    input_shape = tuple(args.input_shape)
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "networks",
        "input_shape": list(input_shape),
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "timing": "interleaved: each round times every network once, in turn (eager, then deployed)",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "flops_note": "FlopCounterMode: conv + matmul only, 2 FLOPs per multiply-add",
        "reference": f"{REFERENCE} (MONAI 3D ResNet-50, stride-2 stem)",
        "deployed_note": "pipeline.networks.optimized_for_inference: TorchScript, frozen, optimize_for_inference",
        "default_inference_form": DEFAULT_INFERENCE_FORM,
    }

    eager: dict[str, torch.nn.Module] = {}
    described: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "resnet34":
            model = monai_resnet(34)
            described[name] = {"stem": network_spec("resnet18").stem, "summary": "MONAI 3D ResNet-34 (peer only)"}
        else:
            model = build(name)
            described[name] = {"stem": network_spec(name).stem, "summary": network_spec(name).summary}
        eager[name] = model.eval()
    paper = {f"{name} (paper form)": build(name, **PAPER_FORM).eval() for name in PAPER_NETWORKS if name in names}
    eager.update(paper)
    print(f"[networks] counting parameters and FLOPs of {len(eager)} networks ...", flush=True)
    records: dict[str, dict[str, Any]] = {
        name: {**described.get(name, {}), "params": _count_params(model), "flops": _count_flops(model, x)}
        for name, model in eager.items()
    }

    timed: dict[str, Callable[[torch.Tensor], Any]] = {}
    for name, model in eager.items():
        timed[f"{name}|eager"] = model
        if not args.skip_deployed:
            print(f"[networks] deploying {name} ...", flush=True)
            timed[f"{name}|deployed"] = optimized_for_inference(model)
    print(f"[networks] timing {len(timed)} forms, {args.repeats} interleaved rounds ...", flush=True)
    result["load_average_timing_start"] = [round(v, 2) for v in os.getloadavg()]
    latencies = interleaved_latency(timed, x, warmup=args.warmup, repeats=args.repeats)
    result["load_average_timing_end"] = [round(v, 2) for v in os.getloadavg()]
    for key, latency in latencies.items():
        name, form = key.split("|")
        records[name][form] = latency
    for record in records.values():
        # the flat keys the summary and earlier results use: eager median
        record["latency_s"] = record["eager"]["median_s"]
        record["cpu_s"] = record["eager"]["cpu_median_s"]
    reference = records[REFERENCE]
    for name, record in records.items():
        for key in ("params", "flops", "latency_s", "cpu_s"):
            record[f"{key}_ratio_to_{REFERENCE}"] = _ratio(record[key], reference[key])
        for form in ("eager", "deployed"):
            if form in record and form in reference:
                record[form]["median_ratio_to_resnet50"] = _ratio(record[form]["median_s"], reference[form]["median_s"])
        base = name.removesuffix(" (paper form)")
        peer = PEERS.get(base)
        if peer in records:
            record["peer"] = peer
            for form in ("eager", "deployed"):
                if form in record:
                    record[form]["median_ratio_to_peer"] = _ratio(
                        record[form]["median_s"], records[peer][form]["median_s"]
                    )
                    record[form]["min_ratio_to_peer"] = _ratio(record[form]["min_s"], records[peer][form]["min_s"])
        if name in paper and base in records:
            for form in ("eager", "deployed"):
                if form in record and form in records[base]:
                    record[form]["default_over_paper"] = _ratio(
                        records[base][form]["median_s"], record[form]["median_s"]
                    )
    result["networks"] = {name: records[name] for name in names}
    result["paper_form"] = {name: records[name] for name in paper}
    result["goals"] = _goals(records)

    if not args.skip_profile:
        profiles: dict[str, Any] = {}
        for name in ("aam_resnet50 (paper form)", "aam_resnet50", REFERENCE):
            if name in eager:
                print(f"[networks] profiling {name} ...", flush=True)
                profiles[name] = profile_network(eager[name], x)
        profiles["finding"] = _profile_finding(profiles)
        result["profile"] = profiles

    channels_last = {}
    for name in ("aam_resnet18", "resnet18"):
        if name in eager:
            copy = build(name).eval().to(memory_format=torch.channels_last_3d)
            copy.load_state_dict(eager[name].state_dict())
            channels_last[name] = copy
    if channels_last:
        print("[networks] channels_last_3d ...", flush=True)
        x_last = x.contiguous(memory_format=torch.channels_last_3d)
        forms = {f"{n}|contiguous": eager[n] for n in channels_last}
        forms.update({f"{n}|channels_last_3d": (lambda _x, m=m: m(x_last)) for n, m in channels_last.items()})
        timing = interleaved_latency(forms, x, warmup=1, repeats=5)
        section: dict[str, Any] = {}
        for name in channels_last:
            contiguous, last = timing[f"{name}|contiguous"], timing[f"{name}|channels_last_3d"]
            ratio = _ratio(last["median_s"], contiguous["median_s"])
            section[name] = {
                "contiguous_s": contiguous["median_s"],
                "channels_last_3d_s": last["median_s"],
                "ratio": ratio,
            }
        section["pays"] = all(v["ratio"] is not None and v["ratio"] < 0.95 for v in section.values())
        result["channels_last_3d"] = section

    if not args.skip_default_stem:
        print("[networks] MONAI resnet50 with its default stride-1 stem ...", flush=True)
        default_stem = monai_resnet50(spatial_dims=3, n_input_channels=1, num_classes=2).eval()
        timing = interleaved_latency({"default": default_stem, REFERENCE: eager[REFERENCE]}, x, warmup=1, repeats=5)
        record = {
            "stem": "7x7x7 conv stride 1 (MONAI default conv1_t_stride=1) + 3x3x3 max-pool stride 2",
            "params": _count_params(default_stem),
            "flops": _count_flops(default_stem, x),
            "latency_s": timing["default"]["median_s"],
            "latency_ratio_to_stride2_in_turn": _ratio(timing["default"]["median_s"], timing[REFERENCE]["median_s"]),
        }
        record["flops_ratio_to_resnet50"] = _ratio(record["flops"], reference["flops"])
        result["monai_resnet50_default_stem"] = record

    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    path = write_result_json(args.output, result)
    print(f"[networks] wrote {path} in {result['total_seconds']} s")
    for name, record in records.items():
        deployed = record.get("deployed", {}).get("median_s")
        print(
            f"  {name:28s} params {record['params']:>11,d} ({record['params_ratio_to_resnet50']:.3f})"
            f"  GFLOPs {record['flops'] / 1e9:6.1f}  eager {record['latency_s']:.3f} s"
            f" ({record['latency_s_ratio_to_resnet50']:.3f})"
            + ("" if deployed is None else f"  deployed {deployed:.3f} s")
        )
    for goal in result["goals"]:
        print(f"  goal {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
