"""``aamct``: every failure ends with one line on stderr at the default log level; ``-v`` adds the traceback."""

from __future__ import annotations

import argparse

import pytest

from pipeline import cli
from pipeline.errors import UserError


def _failing(monkeypatch, error: BaseException) -> None:
    """Make ``aamct boom`` raise ``error`` from inside a subcommand."""

    def build_parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="aamct")
        parser.add_argument("-v", "--verbose", action="store_true")
        sub = parser.add_subparsers(dest="command", required=True)

        def boom(_args):
            raise error

        sub.add_parser("boom").set_defaults(func=boom)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)


def _wrapped_user_error() -> RuntimeError:
    try:
        try:
            raise UserError("/data/case.nii.gz: non-finite values: 1 of 8 voxels are NaN")
        except UserError as inner:
            raise RuntimeError("applying transform <monai.transforms.Resized object at 0x7f>") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (UserError("a.csv: manifest not found"), 2, "aamct: error: a.csv: manifest not found"),
        # MONAI wraps a transform's error; the user's message is found inside
        (_wrapped_user_error(), 2, "aamct: error: /data/case.nii.gz: non-finite values: 1 of 8 voxels are NaN"),
        (
            PermissionError(13, "Permission denied", "/proc/out/run.json"),
            2,
            "aamct: error: /proc/out/run.json: Permission denied",
        ),
        (ZeroDivisionError("division by zero"), 1, "aamct: error: unexpected ZeroDivisionError: division by zero"),
    ],
)
def test_a_failure_is_one_line_and_verbose_adds_the_traceback(monkeypatch, capsys, error, status, line):
    _failing(monkeypatch, error)
    assert cli.main(["boom"]) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith(line)
    assert "Traceback" not in err
    assert cli.main(["-v", "boom"]) == status
    verbose = capsys.readouterr().err
    assert "Traceback (most recent call last)" in verbose and verbose.strip().splitlines()[-1].startswith(line)


def test_the_installed_console_script_says_a_user_mistake_in_one_line(tmp_path):
    # stays a subprocess: the point is the `aamct` console script pip installed (pyproject [project.scripts]), its
    # exit status and what reaches the terminal; the other CLI tests call cli.main(argv) in the test process
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("aamct")
    if not script.is_file():
        pytest.skip(f"the aamct console script is not installed beside {sys.executable} (make setup installs it)")
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: aamct")
    missing = tmp_path / "nope.csv"
    done = subprocess.run([str(script), "manifest", "split", str(missing)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"aamct: error: {missing}: manifest not found\n"
