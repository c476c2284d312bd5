"""Layering of the package, read from the source (every import, at module level or inside a function):

* the CLI is the top layer: no library module imports ``actlab.cli`` (``profile`` used to, for its console);
* ``actlab.eval`` (quality of a model) and ``actlab.sparsity`` (making and applying plans) are peers that
  do not import each other; what needs both (evaluating a plan: ``actlab.plan_eval``, ``actlab.optimize``)
  sits above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "actlab"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, src: Path = SRC) -> set[str]:
    """Absolute names of every module ``path`` imports anywhere in its body (``from a import b`` counts as
    ``a`` and ``a.b``, since ``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _imports(prefix: str, names: set[str]) -> list[str]:
    return sorted(n for n in names if n == prefix or n.startswith(prefix + "."))


def _sources(under: str = "") -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py"))


def test_the_parser_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "src" / "actlab" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "mod.py"
    f.write_text("import actlab.cli.main\nfrom actlab import eval\nfrom . import sibling\nfrom ..sparsity import plan\n"
                 "def later():\n    from actlab.sparsity.apply import apply_\n")
    names = imports_of(f, tmp_path / "src")
    assert {"actlab.cli.main", "actlab.eval", "actlab.sub.sibling", "actlab.sparsity.plan",
            "actlab.sparsity.apply"} <= names
    # and on the real tree: a module known to import both peers is seen doing so
    top = imports_of(PACKAGE / "plan_eval.py")
    assert _imports("actlab.sparsity", top) and _imports("actlab.eval", top)


def test_no_library_module_imports_the_cli():
    offenders = {
        str(p.relative_to(PACKAGE)): _imports("actlab.cli", imports_of(p))
        for p in _sources()
        if "cli" not in p.relative_to(PACKAGE).parts[:1] and p.name != "__main__.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(("package", "forbidden"), [("eval", "actlab.sparsity"), ("sparsity", "actlab.eval")])
def test_eval_and_sparsity_do_not_import_each_other(package, forbidden):
    offenders = {str(p.relative_to(PACKAGE)): _imports(forbidden, imports_of(p)) for p in _sources(package)}
    assert _sources(package), package
    assert {k: v for k, v in offenders.items() if v} == {}
