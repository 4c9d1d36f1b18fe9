"""The package's import structure: no import cycles inside ``stepplan/``, and every module
imports on its own (in a fresh interpreter, not after its siblings happened to be loaded).

The graph comes from a small AST walk over ``stepplan/``: every ``import`` and ``from … import``
anywhere in a module (top level or inside a function; relative imports resolved), an edge to
the module named, or to the submodule when ``from package import name`` names one. Imports under
``if TYPE_CHECKING:`` are left out: they never run. Importing ``a.b.c`` also runs ``a/__init__``
and ``a/b/__init__``, so those packages are edges too.

A cycle anywhere inside ``stepplan/`` fails, naming every module on it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "stepplan"
SKIP = ("stepplan.__main__", "stepplan.store.migrations")  # runs the CLI; Alembic scripts, not modules
STRICT = ("stepplan.billing", "stepplan.store")  # subpackages that must be cycle-free now


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if not any(name == s or name.startswith(s + ".") for s in SKIP):
            out[name] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: skips the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module → the stepplan modules it imports (directly)."""
    files = module_files()
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                src = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                src = node.module or ""
            targets.add(src)
            targets.update(f"{src}.{alias.name}" for alias in node.names if f"{src}.{alias.name}" in files)
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages around it
                name = ".".join(parts[:i])
                if name in files and name != mod and not mod.startswith(name + "."):
                    graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    out = []
    for comp in comps:
        start = min(comp)
        prev: dict[str, str] = {}
        frontier, seen, path = [start], {start}, None
        while frontier and path is None:  # breadth-first: the shortest way back to start
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w == start:
                        path = [v]
                        while path[-1] != start:
                            path.append(prev[path[-1]])
                        path.reverse()
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if path is not None:
                    break
            frontier = nxt
        assert path is not None
        out.append([*path, start])
    return sorted(out)


def _strict(cycle: list[str]) -> bool:
    return any(m == s or m.startswith(s + ".") for m in cycle for s in STRICT)


def _describe(found: list[list[str]]) -> str:
    return "\n".join(" → ".join(c) for c in found)


def test_the_import_graph_sees_relative_and_function_level_imports() -> None:
    g = import_graph()
    assert "stepplan.store.ledger" in g["stepplan.billing.check"]  # from ..store import ledger
    assert "stepplan.billing.credit_meter" in g["stepplan.app"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles_through_billing_or_store() -> None:
    found = [c for c in cycles(import_graph()) if _strict(c)]
    assert not found, "import cycles through stepplan/billing or stepplan/store:\n" + _describe(found)


# What billing/ and store/ may import from the rest of stepplan (besides themselves): store/ is the
# bottom layer (SQL only); billing/ sits on it and on the shared types below the request pipeline.
MAY_IMPORT = {
    "stepplan.store": (),
    "stepplan.billing": ("stepplan.store", "stepplan.catalog", "stepplan.errors", "stepplan.redact",
                         "stepplan.protocols"),
}


def test_billing_and_store_import_only_the_layers_below_them() -> None:
    wrong = []
    for mod, targets in sorted(import_graph().items()):
        for layer, allowed in MAY_IMPORT.items():
            if mod == layer or mod.startswith(layer + "."):
                ok = (layer, *allowed)
                wrong += [f"{mod} → {t}" for t in sorted(targets)
                          if not any(t == a or t.startswith(a + ".") for a in ok)]
    assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


def test_no_import_cycles_anywhere() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles inside stepplan/:\n" + _describe(found)


_EACH_ON_ITS_OWN = r"""
import importlib, json, os, sys, traceback
mods, preload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in preload:  # third-party libraries, loaded once so each child only pays for stepplan's own modules
    try:
        importlib.import_module(name)
    except Exception:
        pass
failed = {}
for mod in mods:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(mod)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc()[-3000:].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        failed[mod] = err or f"exit status {status}"
print(json.dumps(failed))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_every_module_imports_on_its_own() -> None:
    """Each module in a fresh process (forked from one interpreter that has loaded no stepplan module)."""
    files = module_files()
    third_party: set[str] = set()
    for path in files.values():
        for node in _imports(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if node.module and not node.level else [])
            third_party.update(n.split(".")[0] for n in names if n.split(".")[0] != "stepplan")
    preload = sorted(n for n in third_party if n not in sys.stdlib_module_names and n != "llama_cpp")
    r = subprocess.run([sys.executable, "-c", _EACH_ON_ITS_OWN, json.dumps(sorted(files)), json.dumps(preload)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    failed = json.loads(r.stdout.strip().splitlines()[-1])
    assert not failed, "modules that do not import on their own:\n" + "\n".join(
        f"--- {m}\n{tb}" for m, tb in failed.items())
