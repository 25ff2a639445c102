"""The lessons' exercises keep their answers hidden, and the lessons run on any architecture.

Read from each notebook's JSON, no kernel needed:

* A solution is a run of code cells whose source is hidden (``metadata.jupyter.source_hidden``),
  after a "Solution ... (click to reveal)" Markdown cell. No solution cell carries saved
  outputs (they would show the answer under the question), and every solution is preceded
  by a "predict first" prompt and a hint that is hidden the same way (a Markdown cell with
  ``source_hidden``, after its "Hint ... (click to reveal)" label).
* No lesson hard-codes an x86-64 syscall wrapper (``__x64_sys_...``) or a syscall number: names
  and numbers are resolved for the running architecture.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def _cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    for c in cells:
        c["text"] = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
    return cells


def _hidden(cell: dict) -> bool:
    return bool(cell.get("metadata", {}).get("jupyter", {}).get("source_hidden"))


def _label(cell: dict, word: str) -> bool:
    return (
        cell["cell_type"] == "markdown"
        and word in cell["text"]
        and "click to reveal" in cell["text"]
        and not _hidden(cell)
    )


def solutions(cells: list[dict]) -> list[tuple[int, list[int]]]:
    """(index of the Solution label, indices of its hidden code cells) for each solution."""
    found = []
    for i, c in enumerate(cells):
        if not _label(c, "Solution"):
            continue
        run = []
        j = i + 1
        while j < len(cells) and cells[j]["cell_type"] == "code" and _hidden(cells[j]):
            run.append(j)
            j += 1
        found.append((i, run))
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_every_hidden_code_cell_belongs_to_a_solution(notebook):
    cells = _cells(notebook)
    in_solutions = {j for _, run in solutions(cells) for j in run}
    hidden_code = {i for i, c in enumerate(cells) if c["cell_type"] == "code" and _hidden(c)}
    assert hidden_code == in_solutions, (
        f"hidden code cells outside a solution: {hidden_code - in_solutions}"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_no_solution_shows_its_output(notebook):
    cells = _cells(notebook)
    found = solutions(cells)
    assert found, f"{notebook.name} has no exercises with a solution"
    shown = [
        j
        for _, run in found
        for j in run
        if cells[j].get("outputs") or cells[j].get("execution_count")
    ]
    assert not shown, f"{notebook.name}: solution cells with saved outputs: {shown}"
    for label, run in found:
        assert run, (
            f"{notebook.name}: cell {label} is a Solution label with no hidden code after it"
        )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_each_solution_has_a_prediction_and_a_hidden_hint_before_it(notebook):
    cells = _cells(notebook)
    problems = []
    previous_end = 0
    for label, run in solutions(cells):
        hint_label, hint = label - 2, label - 1
        if not (hint >= 0 and cells[hint]["cell_type"] == "markdown" and _hidden(cells[hint])):
            problems.append(f"cell {label}: no hidden Markdown hint right before the solution")
        elif not cells[hint]["text"].strip():
            problems.append(f"cell {hint}: the hint is empty")
        elif not _label(cells[hint_label], "Hint"):
            problems.append(f"cell {hint}: the hint has no 'Hint ... (click to reveal)' label")
        # the prompt to predict: in the exercise's own text, between the last solution and the hint
        asked = [
            c["text"]
            for c in cells[previous_end : max(hint_label, 0)]
            if c["cell_type"] == "markdown" and not _hidden(c)
        ]
        if not any(re.search(r"\bpredict\b", t, re.I) for t in asked):
            problems.append(
                f"cell {label}: the exercise does not ask to predict before the solution"
            )
        previous_end = run[-1] + 1 if run else label + 1
    assert not problems, f"{notebook.name}:\n" + "\n".join(problems)


# ------------------------------------------------------------------ portability

# A number is a syscall number when the code says so: compared with, or stored from, a syscall id,
# looked up in a syscall table, or named after a syscall in capitals (GETPPID = 110).
SYSCALL_NUMBER = [
    re.compile(r"syscall_name\(\s*\d+\s*\)"),
    re.compile(r"(?:args->id|->nr|\bnr|\bid)\s*[!=<>]=?\s*\d+\b"),
    re.compile(r"\b__NR_\w+\s*=\s*\d+"),
    re.compile(
        r"^\s*[A-Z_]*(?:SYS|NR|GETPPID|OPENAT|EXECVE|READ|WRITE|CLOSE)[A-Z_]*\s*=\s*\d+\b", re.M
    ),
    re.compile(r"\bsyscall\s+\d{1,3}\b(?!\s*(?:times|calls|s\b))"),
    re.compile(r"\bfor\s+\w+\s+in\s+\(\s*\d+(?:\s*,\s*\d+)+\s*\)\s*:\s*\n\s*.*syscall_name"),
]
X64 = re.compile(r"__x64_|__ia32_")
INLINE_SYSCALL = re.compile(r"""\b(?:asm|__asm__)\b[^;]*["']\s*syscall""", re.S)


def _lesson_text(path: Path) -> list[tuple[int, str, str]]:
    """(cell index, kind, text) for what the lesson teaches: sources, not saved outputs."""
    return [(i, c["cell_type"], c["text"]) for i, c in enumerate(_cells(path))]


def scan(text: str) -> list[str]:
    hits = [m.group(0) for p in SYSCALL_NUMBER for m in p.finditer(text)]
    hits += [m.group(0) for m in X64.finditer(text)]
    hits += [m.group(0)[:40] for m in INLINE_SYSCALL.finditer(text)]
    return hits


def test_the_scan_finds_what_it_should():
    assert scan("GETPPID = 110  # x86-64")
    assert scan('assert syscall_name(110) == "getppid"')
    assert scan("if (args->id == 39) return 0;")
    assert scan('kprobe="__x64_sys_execve"')
    assert scan('asm volatile("syscall" : "=a"(r) : "a"(39));')
    assert scan("  any process ─ syscall 110 (getppid) ─►")
    assert scan("for number in (0, 1, 110, 231):\n    print(syscall_name(number))")
    assert not scan("GETPPID = probes.syscall_number('getppid')")
    assert not scan("syscall(SYS_getppid);")
    assert not scan("made = 2 * 200_000")
    assert not scan("1000 getppid() calls, syscall 1000 times")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_no_hard_coded_syscall_numbers_or_x86_names(notebook):
    found = [
        f"cell {i} ({kind}): {hit!r}"
        for i, kind, text in _lesson_text(notebook)
        for hit in scan(text)
    ]
    assert not found, f"{notebook.name}:\n" + "\n".join(found)
