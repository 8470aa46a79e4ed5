"""The package's structure, measured: its import graph, module sizes, local imports and names.

The graph is drawn with ``ast`` from every ``import`` in ``amhelpers/*.py``, at module level and
inside functions (a function-local import still makes a cycle: it only hides it until called).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import amhelpers
from amhelpers.markdown import markdown_table

PKG = Path(amhelpers.__file__).resolve().parent
MODULES = sorted(p.stem for p in PKG.glob("*.py"))
MAX_LINES = 500
LONG_REASON = "Why this module is long:"

# The checkpoint / diagnose side: one bottom module (tables) and the parts diagnose is made of.
DIAGNOSE_SIDE = ("tables", "undertrained", "ckptio", "checkpoint", "logs", "causes", "diagnose",
                 "markdown")
# Imports left inside functions on that side, each for a measured reason (seconds on top of torch).
ALLOWED_LOCAL_IMPORTS = {
    ("diagnose", "matplotlib.backends.backend_agg"): "matplotlib: 0.9 s, only --plot needs it",
    ("diagnose", "matplotlib.figure"): "matplotlib: 0.9 s, only --plot needs it",
    ("logs", "tensorboard.backend.event_processing"): "tensorboard: 0.25 s, only TensorBoard logs",
}
CLI_PROTOCOL = {"add_arguments", "run", "main"}  # every CLI group module defines these
# Hand-built Markdown tables still in the library (to be replaced by markdown.markdown_table).
HAND_BUILT_TABLES_LEFT: set[str] = set()


def _imports(source: str, modules: set[str]) -> list[tuple[str, str, int, bool]]:
    """``(imported module, full name, line, local)`` for each import in ``source``.

    ``imported module`` is the ``amhelpers`` module named (or ``""`` for a third-party one);
    ``local`` is True inside a function or class body.
    """
    found: list[tuple[str, str, int, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            full = ""
            if isinstance(child, ast.ImportFrom):
                full = "." * child.level + (child.module or "")
                if child.level == 1 or (child.module or "").split(".")[0] == "amhelpers":
                    parts = (child.module or "").split(".")
                    parts = parts[1:] if parts[0] == "amhelpers" else parts
                    names = [parts[0]] if parts and parts[0] else [a.name for a in child.names]
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    full = alias.name
                    parts = alias.name.split(".")
                    if parts[0] == "amhelpers" and len(parts) > 1:
                        names.append(parts[1])
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                inner = [n for n in names if n in modules]
                for name in inner or ([""] if not names else []):
                    found.append((name, full, child.lineno, local))
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.ClassDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` (module level and function-local) within the package."""
    modules = set(sources)
    return {name: {m for m, _, _, _ in _imports(src, modules) if m and m != name}
            for name, src in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing ``start`` may import, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _source(name: str) -> str:
    return (PKG / f"{name}.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph({name: _source(name) for name in MODULES})


def test_the_checker_finds_a_cycle_hidden_in_a_function():
    sources = {"a": "from .b import x\n",
               "b": "import numpy\n\ndef f():\n    from .a import y\n    return y\n",
               "c": "from amhelpers import a\nfrom amhelpers.b import x\nimport amhelpers.a\n"}
    graph = import_graph(sources)
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a", "b"}}
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert reachable(graph, "c") == {"a", "b"}


def test_import_graph_has_no_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(("module", "never"), [
    ("freeze", {"train", "model"}),
    *[(side, {"train"}) for side in DIAGNOSE_SIDE],
    ("text", {"tokenizer"}),
    ("model", {"speech"}),
    ("tables", set(MODULES) - {"tables"}),  # the bottom module imports nothing of amhelpers
])
def test_layering(graph, module, never):
    bad = reachable(graph, module) & never
    assert not bad, f"{module} imports {sorted(bad)} (directly or through another module)"


def test_cli_groups_without_torch_do_not_import_it():
    code = ("import sys, amhelpers.tokenizer, amhelpers.markdown, amhelpers.logs; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name", MODULES)
def test_module_reads_in_one_sitting_or_says_why(name):
    source = _source(name)
    lines = source.count("\n")
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(source)) or ""
    top = doc.splitlines()[:10]
    assert any(line.startswith(LONG_REASON) for line in top), (
        f"amhelpers/{name}.py has {lines} lines (> {MAX_LINES}): split it, or state why near the "
        f"top of its docstring with a line starting {LONG_REASON!r}")


@pytest.mark.parametrize("name", DIAGNOSE_SIDE)
def test_diagnose_side_imports_at_the_top(name):
    local = [(full, line) for _, full, line, is_local in _imports(_source(name), set(MODULES))
             if is_local and (name, full) not in ALLOWED_LOCAL_IMPORTS]
    assert not local, (f"amhelpers/{name}.py imports inside functions: {local}; import at the "
                       "top, or add the module to ALLOWED_LOCAL_IMPORTS with a measured reason")


def test_public_names_are_defined_once():
    defined: dict[str, list[str]] = {}
    for name in MODULES:
        for node in ast.parse(_source(name)).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                defined.setdefault(node.name, []).append(name)
    twice = {f: where for f, where in defined.items() if len(where) > 1 and f not in CLI_PROTOCOL}
    assert not twice, f"one name, two meanings: {twice}"


def test_markdown_tables_are_written_by_markdown_table_only():
    hand_built = {name for name in MODULES if name != "markdown"
                  and ("| --- |" in _source(name) or '" --- |"' in _source(name))}
    assert hand_built <= HAND_BUILT_TABLES_LEFT, (
        f"hand-built Markdown tables in {sorted(hand_built - HAND_BUILT_TABLES_LEFT)}: use "
        "amhelpers.markdown.markdown_table")


def test_one_module_reads_and_writes_checkpoint_files():
    calls, formats = set(), set()
    for name in MODULES:
        for node in ast.walk(ast.parse(_source(name))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and node.func.attr in ("load", "save")):
                calls.add(name)
            if isinstance(node, ast.Constant) and node.value == "amhelpers.minivoice/1":
                formats.add(name)
    assert calls == {"ckptio"}, f"torch.load/torch.save outside amhelpers/ckptio.py: {calls}"
    assert formats == {"ckptio"}, f"the checkpoint format string is spelled in {formats}"


def test_markdown_table():
    table = markdown_table([("a|b", 0.123456, None), ("line\nbreak", 3, True)], ["name", "x", "y"])
    assert table.splitlines() == ["| name | x | y |", "| --- | --- | --- |",
                                  "| a\\|b | 0.1235 |  |", "| line break | 3 | True |"]
    assert markdown_table([], ["only"]) == "| only |\n| --- |"
    assert markdown_table([(1.5,)], ["s"], fmt="{:.1f}").endswith("| 1.5 |")
    with pytest.raises(ValueError, match=r"row 1 has 1 values for 2 columns \(a, b\)"):
        markdown_table([(1, 2), (3,)], ["a", "b"])
    with pytest.raises(ValueError, match="at least one column"):
        markdown_table([], [])
