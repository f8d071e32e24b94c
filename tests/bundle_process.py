"""``python -m monai.bundle run ...`` in the test process: the same entry point, config files and overrides, with the
output and exit status a child process would give, and none of the interpreter start-up (~10 s of ``import torch,
monai`` per run on the 2-core CI machine).

What a child process would hide from the next test is put back afterwards: the root logger (the bundle's
``logging.conf`` replaces its handlers), ``sys.excepthook`` (the configs' ``initialize`` installs the one-line error
hook), the warning filters, torch's thread count and deterministic-algorithms flag, and the working folder.

Tests that must prove the stock command itself works keep a real subprocess (see the comments where they do).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["BundleRun", "isolated_process_state", "monai_bundle"]


@dataclass(frozen=True)
class BundleRun:
    """What a finished child process would have given: ``returncode``, ``stdout``, ``stderr`` (text)."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def isolated_process_state(cwd: str | Path | None = None) -> Iterator[None]:
    """Restore, on exit, the process-wide state a bundle run (or an ``aamct`` command) changes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    excepthook = sys.excepthook
    filters = warnings.filters[:]
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    environ = dict(os.environ)
    previous_cwd = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(previous_cwd)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        sys.excepthook = excepthook
        warnings.filters[:] = filters
        warnings._filters_mutated()  # type: ignore[attr-defined]  # drop the per-module "already warned" caches
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        os.environ.clear()
        os.environ.update(environ)


def monai_bundle(*argv: str, cwd: str | Path | None = None) -> BundleRun:
    """``python -m monai.bundle ARGV...`` in this process.

    The command line goes through python-fire over the functions ``monai/bundle/__main__.py`` offers, as in the
    child process, so every ``--key value`` is read the same way; relative paths resolve against ``cwd`` (the folder
    the command would be typed in). A bundle ``run`` sets up logging from the bundle's ``configs/logging.conf``
    (INFO to stdout), as it would in a child.

    The exit is that of the interpreter: 0 after a normal end; for an uncaught exception, whatever
    ``sys.excepthook`` prints (the configs' one-line error hook, or Python's traceback) goes to ``stderr`` and the
    status is 1; ``SystemExit`` (python-fire's usage errors included) gives its own status.
    """
    import fire
    from monai.bundle import __main__ as entry

    commands = {name: getattr(entry, name) for name in entry.__dict__ if not name.startswith("_")}
    commands = {name: value for name, value in commands.items() if callable(value) and name != "annotations"}
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with isolated_process_state(cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            fire.Fire(commands, command=list(argv), name="monai.bundle")
        except SystemExit as done:
            code = done.code
            if code is None or isinstance(code, int):
                returncode = int(code or 0)
            else:
                print(code, file=sys.stderr)
                returncode = 1
        except Exception as error:  # what the interpreter does with an uncaught exception at exit
            try:
                sys.excepthook(type(error), error, error.__traceback__)
            except Exception:
                traceback.print_exception(type(error), error, error.__traceback__)
            returncode = 1
        finally:
            for handler in logging.getLogger().handlers:
                with contextlib.suppress(Exception):
                    handler.flush()
    return BundleRun(returncode=returncode, stdout=stdout.getvalue(), stderr=stderr.getvalue())
