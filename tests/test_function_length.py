"""No function in the package is longer than 60 lines without a comment saying why.

A function that long usually does several things; where it does one thing that is
simply long (a table, a parser's cases), the line before its ``def`` (or its first line)
says so in a comment that starts with ``# long:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ebpfkit"
LIMIT = 60


def long_functions(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """``module:line name (N lines)`` for each function over the limit with no reason given."""
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = min([d.lineno for d in node.decorator_list] + [node.lineno])
        length = node.end_lineno - node.lineno + 1
        if length <= LIMIT:
            continue
        around = lines[first - 2 : first - 1] + lines[node.lineno : node.lineno + 1]
        if any(line.strip().startswith("# long:") for line in around):
            continue
        out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_function_is_longer_than_60_lines_without_a_reason():
    found = [f for path in sorted(PACKAGE.rglob("*.py")) for f in long_functions(path)]
    assert not found, "functions over 60 lines, with no '# long:' reason:\n" + "\n".join(found)


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_functions(tmp_path / "m.py", tmp_path) == ["m.py:1 f (61 lines)"]
    (tmp_path / "m.py").write_text(f"# long: a table\ndef f():\n{body}\n")
    assert long_functions(tmp_path / "m.py", tmp_path) == []
