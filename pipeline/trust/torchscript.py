"""Received TorchScript is not run blind: its operators are checked first, then it runs in a limited child process.

A TorchScript file is a program: its ``forward`` can call ``aten::from_file(path, shared=True)`` (writing chosen
bytes to any file the user can write), ``aten::save``, ``prim::Print``, or loop for ever; a scripted
``__setstate__`` even runs while ``torch.jit.load`` deserialises it. So, before any received ``.ts`` runs:

1. :func:`archive_problems` reads the ``.ts`` file as the zip it is (caps on its members, like the bundle's own) and
   refuses a file defining ``__setstate__`` (the exporter's traced modules have none), so loading runs no code;
2. in a child process (:func:`run_torchscript`: ``fork``, ``RLIMIT_AS`` = the parent's address space + a budget,
   ``RLIMIT_FSIZE`` = 0 so no file can grow, killed past a time limit) it is loaded and every node of every method
   of every submodule, blocks included, is checked against :data:`ALLOWED_OPS` -- the operators that the exporter's
   traces of the registry's networks contain (convolutions, norms, activations, pooling, arithmetic, shape and
   control ops). Anything else (file, storage, print, unknown operators) refuses it before it runs;
3. only then are its weights compared with ``model.pt`` and is it run on the probe inputs; the outputs come back
   through a pipe, as bytes read with ``torch.load(weights_only=True)``.

The operator set was measured with ``torch.jit.trace`` on every network of :func:`pipeline.networks.available` and
its ``DenseClassifier`` (64 x 64 x 32), and on the exported test bundle's ``model.ts`` / ``model_dense.ts``; the
exporter's ``model.ts`` is now the dense trace under a scripted spatial mean (:class:`pipeline.networks.
SpatialMeanClassifier`), which adds ``prim::CallMethod``, ``aten::flatten`` and ``aten::mean`` (tests/trust checks
two networks).
Hand-written: neither MONAI nor torch ships an operator allowlist or a sandboxed runner.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import resource
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.contracts import defaults
from pipeline.errors import UserError
from pipeline.trust.text import printable

__all__ = [
    "ALLOWED_OPS",
    "TorchScriptRun",
    "archive_problems",
    "graph_operators",
    "run_torchscript",
]

#: operators the exporter's TorchScript files contain (see the module docstring for how they were measured), plus
#: their in-place / functional twins
ALLOWED_OPS = frozenset(
    {
        # convolution, normalisation, linear
        "aten::_convolution",
        "aten::conv3d",
        "aten::conv2d",
        "aten::conv1d",
        "aten::batch_norm",
        "aten::instance_norm",
        "aten::group_norm",
        "aten::layer_norm",
        "aten::linear",
        "aten::matmul",
        # activations
        "aten::relu",
        "aten::relu_",
        "aten::leaky_relu",
        "aten::leaky_relu_",
        "aten::sigmoid",
        "aten::sigmoid_",
        "aten::tanh",
        "aten::softmax",
        "aten::gelu",
        "aten::elu",
        "aten::prelu",
        "aten::dropout",
        # pooling and resampling
        "aten::adaptive_avg_pool3d",
        "aten::adaptive_max_pool3d",
        "aten::avg_pool3d",
        "aten::max_pool3d",
        "aten::upsample_trilinear3d",
        "aten::upsample_nearest3d",
        # the rest of torch.nn.functional.interpolate's scripted body (inlined with it)
        "aten::upsample_nearest1d",
        "aten::upsample_nearest2d",
        "aten::upsample_linear1d",
        "aten::upsample_bilinear2d",
        "aten::upsample_bicubic2d",
        "aten::_upsample_nearest_exact1d",
        "aten::_upsample_nearest_exact2d",
        "aten::_upsample_nearest_exact3d",
        "aten::_upsample_bilinear2d_aa",
        "aten::_upsample_bicubic2d_aa",
        "aten::_upsample_lanczos2d_aa",
        "aten::adaptive_avg_pool1d",
        "aten::adaptive_avg_pool2d",
        "aten::floor",
        "aten::list",
        # arithmetic and reductions
        "aten::add",
        "aten::add_",
        "aten::sub",
        "aten::mul",
        "aten::div",
        "aten::addcmul",
        "aten::neg",
        "aten::sum",
        "aten::mean",
        "aten::ones_like",
        "aten::zeros_like",
        # shapes and indexing
        "aten::cat",
        "aten::flatten",
        "aten::reshape",
        "aten::view",
        "aten::squeeze",
        "aten::unsqueeze",
        "aten::movedim",
        "aten::permute",
        "aten::contiguous",
        "aten::select",
        "aten::slice",
        "aten::size",
        "aten::dim",
        "aten::numel",
        # scalars, lists and comparisons of the scripted parts
        "aten::Float",
        "aten::Int",
        "aten::Bool",
        "aten::ScalarImplicit",
        "aten::__and__",
        "aten::__or__",
        "aten::__not__",
        "aten::__is__",
        "aten::__isnot__",
        "aten::__contains__",
        "aten::__getitem__",
        "aten::append",
        "aten::len",
        "aten::eq",
        "aten::ne",
        "aten::gt",
        "aten::lt",
        "aten::ge",
        "aten::le",
        "aten::format",
        "aten::__range_length",
        "aten::__derive_index",
        # graph structure
        "prim::Constant",
        "prim::GetAttr",
        "prim::SetAttr",
        "prim::CallMethod",
        "prim::CallFunction",
        "prim::If",
        "prim::Loop",
        "prim::ListConstruct",
        "prim::ListUnpack",
        "prim::TupleConstruct",
        "prim::TupleUnpack",
        "prim::TupleIndex",
        "prim::NumToTensor",
        "prim::RaiseException",
        "prim::Uninitialized",
        "prim::unchecked_cast",
        "prim::device",
        "prim::dtype",
    }
)
_MAX_TS_MEMBERS = 16384
_OUT_OF_TIME = "out of time"


def archive_problems(path: str | Path, *, max_bytes: int = defaults.BUNDLE_MAX_MODEL_BYTES) -> list[str]:
    """What makes a ``.ts`` file unsafe to load, read from it as a zip (nothing is deserialised).

    Args:
        path: the TorchScript file.
        max_bytes: cap on its inflated members in all.

    Returns:
        One line per problem; empty when ``torch.jit.load`` can open it without running its code.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > _MAX_TS_MEMBERS:
                return [f"{path.name}: {len(infos)} members (more than {_MAX_TS_MEMBERS})"]
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                return [f"{path.name}: inflates to {total:,} bytes (more than {max_bytes:,})"]
            problems = []
            for info in infos:
                if info.file_size > defaults.BUNDLE_RATIO_FLOOR_BYTES and info.file_size > (
                    defaults.BUNDLE_MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
                ):
                    problems.append(f"{path.name}: member {printable(info.filename)} is a zip bomb")
                parts = info.filename.split("/")
                if len(parts) > 1 and parts[1] == "code" and info.filename.endswith(".py"):
                    source = archive.read(info).decode("utf-8", errors="replace")
                    if "__setstate__" in source:
                        problems.append(
                            f"{path.name}: {printable(info.filename)} defines __setstate__ (code run while loading)"
                        )
            return problems
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return [f"{path.name}: not a TorchScript archive ({printable(err, limit=160)})"]


def graph_operators(module: torch.jit.ScriptModule) -> set[str]:
    """Every node kind of every method of ``module``, with the submodules and functions it calls inlined (nested
    blocks included): everything its ``forward`` (or another method) can execute."""
    kinds: set[str] = set()

    def block(b: Any) -> None:
        for node in b.nodes():
            kinds.add(node.kind())
            for inner in node.blocks():
                block(inner)

    for name in module._c._method_names():
        method = getattr(module, name)
        block(getattr(method, "inlined_graph", None) or module._c._get_method(name).graph)
    return kinds


@dataclass(frozen=True, kw_only=True)
class TorchScriptRun:
    """What the child process found and computed.

    Attributes:
        operators: file name -> the operators its graphs hold.
        refused: file name -> the operators outside :data:`ALLOWED_OPS` (the file was not run).
        weight_diff: file name -> largest |difference| between its parameters / buffers and the reference state
            dict (``inf`` when their names differ).
        outputs: ``(file name, probe name)`` -> output tensor.
        seconds: wall time of the child.
    """

    operators: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, list[str]] = field(default_factory=dict)
    weight_diff: dict[str, float] = field(default_factory=dict)
    outputs: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0


def _address_space_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _weights_difference(
    module: torch.nn.Module, reference: Mapping[str, torch.Tensor], prefix: str | tuple[str, ...]
) -> float:
    """Largest difference between the module's state and ``reference`` under the first prefix whose keys match."""
    state = {key: value for key, value in module.state_dict().items()}
    for candidate in (prefix,) if isinstance(prefix, str) else prefix:
        expected = {f"{candidate}{key}": value for key, value in reference.items()}
        if set(state) == set(expected):
            break
    else:
        return float("inf")
    worst = 0.0
    for key, value in expected.items():
        got = state[key]
        if got.shape != value.shape:
            return float("inf")
        if value.numel():
            worst = max(worst, float((got.detach().double() - value.double()).abs().max()))
    return worst


def _child(
    connection: Any,
    files: Mapping[str, str],
    probes: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor] | None,
    prefixes: Mapping[str, str | tuple[str, ...]],
    memory_bytes: int,
    allowed: frozenset[str],
) -> None:
    """In the child: limits, load, check operators, compare weights, run the probes; send the result as bytes."""
    try:
        limit = _address_space_bytes() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        torch.set_num_threads(1)
        result: dict[str, Any] = {"operators": {}, "refused": {}, "weight_diff": {}, "outputs": {}}
        modules = {}
        for name, path in files.items():
            module = torch.jit.load(path, map_location="cpu")
            kinds = graph_operators(module)
            result["operators"][name] = sorted(kinds)
            bad = sorted(kinds - allowed)
            if bad:
                result["refused"][name] = bad
            modules[name] = module
        if not result["refused"]:
            for name, module in modules.items():
                module.eval()
                if reference is not None:
                    result["weight_diff"][name] = _weights_difference(module, reference, prefixes.get(name, ""))
                with torch.no_grad():
                    for probe, tensor in probes.items():
                        out = module(tensor.clone())
                        if not isinstance(out, torch.Tensor):
                            raise TypeError(f"{name} returns {type(out).__name__}, not a tensor")
                        result["outputs"][f"{name}\n{probe}"] = out.detach().to(torch.float32).contiguous().clone()
        buffer = io.BytesIO()
        torch.save(result, buffer)
        connection.send_bytes(buffer.getvalue())
    except BaseException as err:  # the parent reports it; nothing may escape the child
        connection.send_bytes(f"error:{type(err).__name__}: {err}".encode("utf-8", errors="replace")[:2000])
    finally:
        connection.close()
        os._exit(0)


def run_torchscript(
    files: Mapping[str, str | Path],
    probes: Mapping[str, torch.Tensor],
    *,
    reference: Mapping[str, torch.Tensor] | None = None,
    prefixes: Mapping[str, str | tuple[str, ...]] | None = None,
    time_limit_s: float = defaults.TORCHSCRIPT_TIME_LIMIT_S,
    memory_bytes: int = defaults.TORCHSCRIPT_MEMORY_LIMIT_BYTES,
    allowed: frozenset[str] = ALLOWED_OPS,
) -> TorchScriptRun:
    """Check and run received TorchScript files in a child process with a time and memory limit.

    Args:
        files: name -> ``.ts`` path (each must have passed :func:`archive_problems`).
        probes: name -> input tensor, run through every file when all their operators are allowed.
        reference: a state dict to compare each file's parameters / buffers with.
        prefixes: name -> key prefix of the reference in that file (``model.`` for the dense wrapper), or a tuple of
            accepted prefixes.
        time_limit_s: the child is killed past this.
        memory_bytes: address space the child may add to the parent's.
        allowed: the operator allowlist.

    Returns:
        The :class:`TorchScriptRun` (``refused`` non-empty: nothing was run).

    Raises:
        UserError: when the child runs out of time or memory, dies, or the files cannot be loaded.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    started = time.perf_counter()
    child = context.Process(
        target=_child,
        args=(
            sender,
            {k: str(v) for k, v in files.items()},
            dict(probes),
            reference,
            dict(prefixes or {}),
            int(memory_bytes),
            allowed,
        ),
        daemon=True,
    )
    child.start()
    sender.close()
    names = ", ".join(files)
    try:
        if not receiver.poll(time_limit_s):
            raise UserError(f"{names}: did not finish within {time_limit_s:g} s (a forward that never returns?)")
        try:
            payload = receiver.recv_bytes()
        except EOFError:
            raise UserError(
                f"{names}: the child process died (exit {child.exitcode}; out of its "
                f"{memory_bytes / 1024**3:.1f} GiB memory limit, or it tried to write a file)"
            ) from None
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        receiver.close()
    seconds = time.perf_counter() - started
    if payload.startswith(b"error:"):
        text = payload[len(b"error:") :].decode("utf-8", errors="replace")
        if "MemoryError" in text or "DefaultCPUAllocator" in text:
            raise UserError(f"{names}: ran out of its {memory_bytes / 1024**3:.1f} GiB memory limit")
        raise UserError(f"{names}: {printable(text, limit=300)}")
    result = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    outputs = {tuple(key.split("\n", 1)): value for key, value in result["outputs"].items()}
    return TorchScriptRun(
        operators=result["operators"],
        refused=result["refused"],
        weight_diff=result["weight_diff"],
        outputs=outputs,
        seconds=seconds,
    )
