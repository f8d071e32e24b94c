"""No import against the data flow: a module never imports a stage above its own, not even inside a function.

Every ``import`` / ``from ... import`` of every module under ``pipeline/`` is read with :mod:`ast` (module level,
function bodies, ``if TYPE_CHECKING`` blocks alike), resolved to the ``pipeline`` module it names, and both ends are
mapped to their stage's rank in the data flow (see ``/work/helpers/COMMON.md`` and ``ARCHITECTURE.md``)::

    errors / io / overrides / _lazy  ->  contracts  ->  data  ->  transforms  ->  networks  ->  trust  ->  training
        ->  inference  ->  evaluation  ->  sharing  ->  cli

``trust`` is the received-bundle gate (integrity, caps, configs read as data, TorchScript checked before it runs):
it rebuilds a received bundle's network through the ``networks`` registry, and every reader of a received bundle
(``inference``'s ``evaluate-cohort`` / ``infer``, ``sharing``'s ``verify`` / ``inspect``) sits above it, so they
all pass the same gate and none needs an arrow running up to reach it.

An import of a higher-ranked stage is a back-edge. Where a lower stage needs behaviour of a higher one, the bundle
config or the CLI composes them (a callable is injected), and shared file formats live in ``pipeline.contracts``.
Bundle configs' ``$pipeline....`` expressions are composition, not imports, and are not checked here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "pipeline"

#: stage -> rank in the data flow (lowest first); modules of one stage may import each other freely
STAGE_RANKS: dict[str, int] = {
    "foundation": 0,
    "contracts": 1,
    "data": 2,
    "transforms": 3,
    "networks": 4,
    "trust": 5,
    "training": 6,
    "inference": 7,
    "evaluation": 8,
    "sharing": 9,
    "entry": 10,
}
#: first component after ``pipeline.`` -> stage (``pipeline`` itself and its helpers are the foundation)
_STAGE_OF_COMPONENT = {
    "errors": "foundation",
    "io": "foundation",
    "overrides": "foundation",
    "_lazy": "foundation",
    "contracts": "contracts",
    "data": "data",
    "transforms": "transforms",
    "networks": "networks",
    "trust": "trust",
    "training": "training",
    "inference": "inference",
    "evaluation": "evaluation",
    "sharing": "sharing",
    "cli": "entry",
    "__main__": "entry",
}


def stage_of(module: str) -> str:
    """The stage of a dotted ``pipeline`` module name (``pipeline`` alone is the foundation)."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        raise ValueError(f"not a pipeline module: {module}")
    if len(parts) == 1:
        return "foundation"
    try:
        return _STAGE_OF_COMPONENT[parts[1]]
    except KeyError:
        raise AssertionError(
            f"pipeline.{parts[1]} has no stage in tests/test_layering.py: give it one in _STAGE_OF_COMPONENT"
        ) from None


@dataclass(frozen=True)
class UpwardImport:
    """One import from a lower stage to a higher one."""

    file: str
    line: int
    importer: str
    imported: str
    local: bool

    def __str__(self) -> str:
        where = "function-local" if self.local else "module-level"
        return (
            f"{self.file}:{self.line}: {where} import of {self.imported} ({stage_of(self.imported)}, rank "
            f"{STAGE_RANKS[stage_of(self.imported)]}) from the {stage_of(self.importer)} stage (rank "
            f"{STAGE_RANKS[stage_of(self.importer)]})"
        )


def module_name(path: Path, root: Path) -> str:
    """``root/pipeline/a/b.py`` -> ``pipeline.a.b`` (``__init__.py`` names its package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.AST, *, root: Path, module: str, is_package: bool) -> list[tuple[int, str, bool]]:
    """``(line, dotted module, inside a function)`` for every import of a ``pipeline`` module in ``tree``.

    ``from pipeline.x import y`` counts as an import of ``pipeline.x.y`` when that is a module under ``root``, else of
    ``pipeline.x`` (a name defined there). Relative imports are resolved against ``module``.
    """
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    name = f"{base}.{alias.name}" if base else alias.name
                    found.append((child.lineno, name if _is_module(root, name) else base, inside))
            visit(child, inside)

    visit(tree, False)
    return [(line, name, local) for line, name, local in found if name.split(".")[0] == "pipeline"]


def upward_imports(root: Path) -> list[UpwardImport]:
    """Every import under ``root/pipeline`` whose target stage ranks above the importing module's stage."""
    problems: list[UpwardImport] = []
    for path in sorted((root / "pipeline").rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rank = STAGE_RANKS[stage_of(module)]
        for line, imported, local in imported_modules(
            tree, root=root, module=module, is_package=path.name == "__init__.py"
        ):
            if STAGE_RANKS[stage_of(imported)] > rank:
                problem = UpwardImport(str(path.relative_to(root)), line, module, imported, local)
                if problem not in problems:  # ``from x import a, b`` is one import
                    problems.append(problem)
    return problems


def test_no_module_imports_a_higher_stage():
    problems = upward_imports(REPO_ROOT)
    assert not problems, "imports against the data flow:\n" + "\n".join(map(str, problems))


def test_the_package_never_imports_the_checkout_s_benchmarks_or_tests():
    # the installed package holds only ``pipeline``: ``benchmarks/`` and ``tests/`` sit above it, in the checkout
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [
                f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] in ("benchmarks", "tests")
            ]
    assert not found, "the package imports checkout-only code:\n" + "\n".join(found)


def test_every_top_level_name_of_the_package_has_a_stage():
    for path in PACKAGE.iterdir():
        if path.name.startswith(".") or path.name == "__pycache__" or path.name == "__init__.py":
            continue
        if path.is_dir() and not (path / "__init__.py").is_file():
            continue  # data folders (e.g. a schema), not modules
        if path.is_dir() or path.suffix == ".py":
            assert stage_of(f"pipeline.{path.stem}") in STAGE_RANKS


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_checker_finds_hidden_and_relative_back_edges(tmp_path):
    # a tiny package with one back-edge of each kind, and imports that are fine
    _write(tmp_path, "pipeline/__init__.py", "")
    _write(tmp_path, "pipeline/errors.py", "")
    _write(tmp_path, "pipeline/contracts/__init__.py", "from pipeline.errors import *\n")
    _write(tmp_path, "pipeline/data/__init__.py", "")
    _write(
        tmp_path,
        "pipeline/data/a.py",
        "import pipeline.contracts\n\ndef f():\n    from pipeline.evaluation import roc\n",
    )
    _write(tmp_path, "pipeline/inference/__init__.py", "")
    _write(
        tmp_path, "pipeline/inference/b.py", "from ..training import x\nfrom . import c\nfrom ..sharing.d import e\n"
    )
    _write(tmp_path, "pipeline/sharing/__init__.py", "")
    _write(tmp_path, "pipeline/sharing/d.py", "import pipeline.inference.b as b\n")
    found = sorted((p.file, p.line, p.imported, p.local) for p in upward_imports(tmp_path))
    assert found == [
        ("pipeline/data/a.py", 4, "pipeline.evaluation", True),
        ("pipeline/inference/b.py", 3, "pipeline.sharing.d", False),
    ]
    message = str(next(p for p in upward_imports(tmp_path) if p.local))
    assert "pipeline/data/a.py:4" in message and "evaluation" in message and "data stage" in message


def test_an_unknown_top_level_module_is_named():
    with pytest.raises(AssertionError, match="pipeline.newstage has no stage"):
        stage_of("pipeline.newstage.thing")
