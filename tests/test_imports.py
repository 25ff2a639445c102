"""The package's imports run one way, and ``import ebpfkit`` stays light.

Data flows C text → compiled program → attached probes → buffers and maps → numpy →
DataFrame → result → display, and the imports follow it: a module never imports, at
module level or inside a function, one that imports it back, however far round.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ebpfkit

PACKAGE = Path(ebpfkit.__file__).parent


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(importer: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``importer``."""
    if level == 0:
        return name or ""
    base = importer.split(".")
    if not is_package:
        base.pop()  # a module's dots count from its package
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The package's modules that ``name`` imports anywhere in its file, with a line of each."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        # The deepest module of the package that the name reaches (`ebpfkit.tools.perf.x`
        # is the module ebpfkit.tools.perf); outside the package, nothing.
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node.level, node.module)
            for alias in node.names:
                # `from . import live` imports the module ebpfkit.live; `from .x import f`, x.
                full = f"{base}.{alias.name}"
                add(full if full in known else base, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            # importlib.import_module(".plots", __name__) is an import too.
            target = node.args[0].value
            if target.startswith("."):
                level = len(target) - len(target.lstrip("."))
                target = _resolve(name, is_package, level, target.lstrip(".") or None)
            add(target, node.lineno)
    return out


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def groups(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The shortest cycle through each module that is on one, without repeats."""
    out: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for group in groups(edges):
        for start in group:
            cycle = _shortest_cycle(edges, set(group), start)
            key = frozenset(cycle)
            if key not in seen:
                seen.add(key)
                out.append(cycle)
    return out


def _shortest_cycle(edges: dict[str, dict[str, int]], group: set[str], start: str) -> list[str]:
    """A shortest way round from ``start`` back to it, inside its group (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                return paths[v] + [start]
            if w in group and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def describe(edges: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def test_the_walk_sees_function_level_and_relative_imports():
    edges = graph()
    # Module level, relative.
    assert "ebpfkit.result" in edges["ebpfkit.recording"]
    # Function level, relative, from the package itself.
    assert "ebpfkit.session" in edges["ebpfkit"]
    # Two dots, from a subpackage.
    assert "ebpfkit.sources" in edges["ebpfkit.tools"]
    # importlib.import_module(".plots", __name__)
    assert "ebpfkit.plots" in edges["ebpfkit"]


def test_the_cycle_finder_names_a_cycle():
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    found = cycles(edges)
    assert found == [["a", "b", "c", "a"]]
    assert describe(edges, found[0]) == "a (line 1) -> b (line 2) -> c (line 3) -> a"


def test_no_import_cycle():
    edges = graph()
    found = [describe(edges, c) for c in cycles(edges)]
    assert not found, "import cycles in the package:\n" + "\n".join(found)


def test_import_ebpfkit_stays_light():
    code = (
        "import sys, ebpfkit\n"
        "heavy = ('bcc', 'pandas', 'matplotlib', 'IPython')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "with open('/proc/self/maps') as f:\n"
        "    libs = sorted({l.split()[-1] for l in f if 'libbcc' in l})\n"
        "print(heavy, libs)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] []", proc.stdout


def test_import_bcc_after_import_ebpfkit_is_bccs():
    # `import ebpfkit` makes the distribution's bcc importable without loading it.
    code = "import sys, ebpfkit; assert 'bcc' not in sys.modules; import bcc; print(bcc.BPF)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr
    assert "<class 'bcc.BPF'>" in proc.stdout
