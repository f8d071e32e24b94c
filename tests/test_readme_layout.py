"""README's "Layout" section matches the tree: every folder and file it names exists, every part of ``pipeline/`` is
named.

The section is one code block of ``NAME[, NAME...]  description`` lines; two spaces of indentation per level put a
name inside the folder above it, and a line indented past the names continues the description above. Names in a
description written as code (```summary.md```, ```benchmarks/```) are paths inside the entry's folder and must exist
too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
#: a line indented this far holds no name: it continues the description of the line above
_CONTINUATION_INDENT = 16
#: suffixes of the file names a description may quote as code
_FILE_SUFFIXES = {".py", ".json", ".md", ".csv", ".conf", ".toml", ".yml", ".yaml", ".txt"}
_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")


def layout_block(text: str) -> list[str]:
    """The lines of the first code block under ``## Layout``."""
    match = re.search(r"^## Layout\n(.*?)(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Layout' section"
    block = re.search(r"^```\n(.*?)^```", match.group(1), flags=re.MULTILINE | re.DOTALL)
    assert block, "README.md's Layout section has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def named_paths(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``(path relative to the repository, [paths its description quotes])`` for every name in the block."""
    entries: list[tuple[str, list[str]]] = []
    parents: list[str] = []  # the folder at each depth
    last_folder = ""
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if indent >= _CONTINUATION_INDENT:
            entries.append((last_folder, _quoted_paths(line, last_folder)))
            continue
        assert indent % 2 == 0, f"odd indentation in the Layout block: {line!r}"
        depth = indent // 2
        assert depth <= len(parents), f"{line!r} is indented below no folder"
        parents = parents[:depth]
        names_part, _, _ = line.strip().partition("  ")
        base = "".join(parents)
        names = [name.strip() for name in names_part.split(",")]
        for name in names:
            entries.append((base + name, []))
        folder = base + names[-1] if names[-1].endswith("/") else base
        entries[-1] = (entries[-1][0], _quoted_paths(line, folder))
        if names[-1].endswith("/"):
            parents.append(names[-1])
        last_folder = folder
    return entries


def _quoted_paths(line: str, folder: str) -> list[str]:
    quoted = re.findall(r"`([^`]*)`", line)
    return [
        folder + token
        for token in quoted
        if _PATH.fullmatch(token) and (token.endswith("/") or Path(token).suffix in _FILE_SUFFIXES)
    ]


def pipeline_parts(root: Path) -> set[str]:
    """Every module and sub-package directly under ``pipeline/`` (what ``farm-studio look`` draws as a room)."""
    parts = set()
    for path in (root / "pipeline").iterdir():
        if path.name.startswith(".") or path.name == "__pycache__":
            continue
        if path.is_file() and path.suffix == ".py":
            parts.add(f"pipeline/{path.name}")
        elif path.is_dir() and any(path.rglob("*.py")):
            parts.add(f"pipeline/{path.name}/")
    return parts


def test_every_name_in_the_layout_exists():
    entries = named_paths(layout_block(README.read_text(encoding="utf-8")))
    missing = []
    for name, quoted in entries:
        for path in [name, *quoted]:
            target = REPO_ROOT / path
            if not (target.is_dir() if path.endswith("/") else target.is_file()):
                missing.append(path)
    assert not missing, f"README.md's Layout names what the tree lacks: {missing}"


def test_every_part_of_the_package_is_named():
    named = {name for name, _ in named_paths(layout_block(README.read_text(encoding="utf-8")))}
    unnamed = sorted(pipeline_parts(REPO_ROOT) - named)
    assert not unnamed, f"README.md's Layout does not name {unnamed}"


def test_the_parser_reads_nesting_lists_and_quoted_files(tmp_path):
    text = (
        "## Layout\n\nintro\n\n```\n"
        "top/          a folder\n"
        "  a.py, b/    two names\n"
        "    c.md      inside b, quoting `d.json`\n"
        "  e/          `f.csv` and `g/`, not `make help`\n"
        "                continued: `h.md`\n"
        "README.md     a file\n"
        "```\n\n## Next\n"
    )
    entries = named_paths(layout_block(text))
    assert entries == [
        ("top/", []),
        ("top/a.py", []),
        ("top/b/", []),
        ("top/b/c.md", ["top/b/d.json"]),
        ("top/e/", ["top/e/f.csv", "top/e/g/"]),
        ("top/e/", ["top/e/h.md"]),
        ("README.md", []),
    ]
    with pytest.raises(AssertionError, match="no '## Layout' section"):
        layout_block("# nothing\n")


def test_parts_of_the_package_are_modules_and_packages(tmp_path):
    for relative in ("pipeline/__init__.py", "pipeline/cli.py", "pipeline/stage/__init__.py", "pipeline/stage/x.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    (tmp_path / "pipeline" / "__pycache__").mkdir()
    (tmp_path / "pipeline" / "schema").mkdir()  # a data folder without code
    assert pipeline_parts(tmp_path) == {"pipeline/__init__.py", "pipeline/cli.py", "pipeline/stage/"}
