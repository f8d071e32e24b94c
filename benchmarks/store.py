"""Benchmark results that accumulate: one JSON file per (benchmark, model, seed), written as it finishes.

A long benchmark (five seeds of three networks on two cohorts, say) does not fit one session. Each finished unit of
work is therefore its own file under ``benchmarks/results/<benchmark>/`` (committed to git with ``--commit``), and
a rerun skips every unit whose file is there *with the same key*: work spread over several sessions adds up, and
the tables are assembled from the files, never from state that only lives on one machine.

What a key holds decides when a result is served again. It names everything that changes the number: the network
and its options, the *functional* fingerprint of the network (:func:`network_fingerprint`: its initial weights and
its output on a fixed input, so an edit elsewhere in ``pipeline/networks`` does not throw away results of a network
that computes the same thing), the seeds, the recipe, and the cohort's content (:func:`cohort_fingerprint`: the
generator's truth tables and the datalist, so a changed generator invalidates results while a refactor that writes
the same cohort does not). The fingerprint of the training code is recorded beside the key, not in it: tables say
when their rows come from different versions of it (:func:`code_versions`), and ``--refresh-stale`` reruns those.

Paths inside a record are relative to the repository root (:func:`portable`), so a results file says nothing about
the machine that ran it; every writer of ``benchmarks/results/`` goes through :func:`write_result_json` /
:func:`write_result_text`, and ``tests/benchmarks/test_results_portable.py`` holds the committed files to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.io import write_json_atomic, write_text_atomic

__all__ = [
    "format_p",
    "RESULTS_ROOT",
    "ResultStore",
    "code_versions",
    "cohort_fingerprint",
    "network_fingerprint",
    "portable",
    "write_result_json",
    "write_result_text",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_ROOT = REPO_ROOT / "benchmarks" / "results"


def _machine_prefixes() -> list[tuple[str, str]]:
    """``(absolute folder, what it is written as)``, longest first: the repository (relative to its root), the
    folder above it (``../shared/data`` is where the project documents the shared data), the temporary folder."""
    prefixes = {str(REPO_ROOT): "."}
    if REPO_ROOT.parent != REPO_ROOT.parent.parent:  # never the filesystem root: it is a prefix of every path
        prefixes.setdefault(str(REPO_ROOT.parent), "..")
    temporary = Path(tempfile.gettempdir()).resolve()
    if temporary != temporary.parent:
        prefixes.setdefault(str(temporary), "$TMPDIR")
    return sorted(prefixes.items(), key=lambda item: -len(item[0]))


def _portable_text(text: str) -> str:
    for prefix, replacement in _machine_prefixes():
        # the folder itself or a path inside it, not a longer name (``/work/main2``) nor part of a URL
        pattern = rf"(?<![\w.~:/\\-]){re.escape(prefix)}(/|(?=[\s\"'`),;:\]]|$))"

        def relative(match: re.Match[str], replacement: str = replacement) -> str:
            return "" if replacement == "." and match.group(1) else replacement + match.group(1)

        text = re.sub(pattern, relative, text)
    return text


def portable(value: Any) -> Any:
    """``value`` with its machine paths made portable (recursively, in plain values and inside command strings).

    Under the repository root: relative to it (``/repo/runs/x`` -> ``runs/x``, the root itself -> ``.``); under the
    folder above it: ``../...`` (``../shared/data/...``); under the temporary folder: ``$TMPDIR/...``.
    """
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return _portable_text(value) if "/" in value or os.sep in value else value
    if isinstance(value, Mapping):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item) for item in value]
    return value


def write_result_json(path: str | os.PathLike, record: Any) -> Path:
    """Write a results file (JSON, atomically) with its paths made :func:`portable`."""
    return write_json_atomic(path, portable(record))


def write_result_text(path: str | os.PathLike, text: str) -> Path:
    """Write a results text file (a Markdown table, atomically) with its paths made :func:`portable`."""
    return write_text_atomic(path, portable(text))


def network_fingerprint(name: str, network_kwargs: Mapping[str, Any] | None = None, *, roi=(64, 64, 32)) -> str:
    """sha256 of what a registry network *is*: its initial weights (seed 0) and its logits on a fixed input.

    Two builds that compute the same function from the same start give the same fingerprint, whatever else changed
    in the code; a changed default, layer or initialisation changes it.
    """
    import torch

    from pipeline.networks import build

    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = build(name, **dict(network_kwargs or {})).eval()
        probe = torch.randn(1, 1, *roi, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = network(probe)
    digest = hashlib.sha256()
    for key, tensor in network.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    # rounded: the same function on another CPU may differ in the last bits of a float sum
    digest.update(json.dumps([round(float(v), 4) for v in logits.flatten()]).encode())
    return digest.hexdigest()


def cohort_fingerprint(truth_dir: str | os.PathLike, datalist: str | os.PathLike) -> str:
    """sha256 of a generated cohort's content: its truth tables and its datalist, with machine paths removed."""
    digest = hashlib.sha256()
    for name in ("truth.csv", "lesions.csv", "generator.json"):
        path = Path(truth_dir) / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if name == "generator.json":
                record = json.loads(text)
                record = {
                    k: v for k, v in record.items() if "dir" not in k and "path" not in k and k not in ("out", "cohort")
                }
                text = json.dumps(record, sort_keys=True)
            digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    record = json.loads(Path(datalist).read_text(encoding="utf-8"))
    folder = str(Path(datalist).resolve().parent) + os.sep
    digest.update(json.dumps(record, sort_keys=True).replace(folder, "").encode())
    return digest.hexdigest()


def code_versions(records: Iterable[Mapping[str, Any]], field: str = "training_code") -> list[str]:
    """The distinct code fingerprints (12 characters) the records were made with, in first-seen order."""
    seen: list[str] = []
    for record in records:
        value = str(record.get(field, ""))[:12]
        if value and value not in seen:
            seen.append(value)
    return seen


class ResultStore:
    """The folder of one benchmark's per-unit result files.

    Args:
        benchmark: its name (the folder ``benchmarks/results/<benchmark>/``).
        root: the results folder.
        commit: ``git commit`` each file as it is written (so a session that ends mid-run keeps what finished).
    """

    def __init__(self, benchmark: str, *, root: str | os.PathLike = RESULTS_ROOT, commit: bool = False) -> None:
        self.folder = Path(root) / benchmark
        self.benchmark = benchmark
        self.commit = commit

    def path(self, *parts: str) -> Path:
        """The file of one unit: ``<folder>/<part>/<part>.json`` (parts name it: difficulty, network, seed ...)."""
        return self.folder.joinpath(*parts[:-1], f"{parts[-1]}.json")

    def load(self, key: Mapping[str, Any], *parts: str) -> dict[str, Any] | None:
        """The unit's record when its file exists and was made with this ``key``; otherwise None."""
        path = self.path(*parts)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if record.get("key") == json.loads(json.dumps(portable(dict(key)))) else None

    def save(self, key: Mapping[str, Any], record: Mapping[str, Any], *parts: str) -> Path:
        """Write the unit's record (atomically, paths made portable) and commit it when asked."""
        path = self.path(*parts)
        payload = portable({"benchmark": self.benchmark, "key": dict(key), **dict(record)})
        payload["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(path, payload)
        if self.commit:
            self._commit(path, " / ".join(parts))
        return path

    def records(self) -> list[dict[str, Any]]:
        """Every record in the folder (sorted by path)."""
        found = []
        for path in sorted(self.folder.rglob("*.json")):
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except ValueError:
                continue
        return found

    def _commit(self, path: Path, what: str) -> None:
        relative = str(path.relative_to(REPO_ROOT))
        for _attempt in range(20):  # another process may hold git's index lock for a moment
            add = subprocess.run(["git", "add", relative], cwd=REPO_ROOT, capture_output=True, text=True)
            if add.returncode == 0:
                done = subprocess.run(
                    ["git", "commit", "-q", "-m", f"bench {self.benchmark}: {what}", "--", relative],
                    cwd=REPO_ROOT,
                    capture_output=True,
                    text=True,
                )
                if done.returncode == 0 or "nothing to commit" in (done.stdout + done.stderr):
                    return
            time.sleep(1.5)
        print(f"[{self.benchmark}] note: could not commit {relative}; it is written, commit it by hand")


def format_p(value: float) -> str:
    """A p-value as the headlines print it: three decimals, ``< 0.001`` below that."""
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
