"""The committed lessons carry no execution timestamps (scripts/tidy_notebooks.py strips them,
scripts/record-lessons.sh --save runs it): a re-run changes only what really changed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "tidy_notebooks.py"
_spec = importlib.util.spec_from_file_location("tidy_notebooks", SCRIPT)
tidy_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tidy_notebooks)


def test_no_lesson_carries_execution_timestamps():
    lessons = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert lessons
    stamped = {
        p.name: sum("execution" in c.metadata for c in nbformat.read(p, as_version=4).cells)
        for p in lessons
    }
    assert not {k: v for k, v in stamped.items() if v}, (
        f"cells with execution timestamps: {stamped}; run scripts/tidy_notebooks.py"
    )
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_tidying_keeps_outputs_and_drops_only_the_timestamps(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cell.metadata = {"tags": ["nbval-ignore-output"], "execution": {"iopub.status.idle": "x"}}
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)

    check = subprocess.run([sys.executable, str(SCRIPT), "--check", str(path)], capture_output=True)
    assert check.returncode == 1
    assert (
        "execution" in nbformat.read(path, as_version=4).cells[1].metadata
    )  # --check wrote nothing
    assert tidy_notebooks.main([str(path)]) == 0

    again = nbformat.read(path, as_version=4).cells[1]
    assert again.metadata == {"tags": ["nbval-ignore-output"]}
    assert again.outputs == cell.outputs and again.execution_count == 3


def test_tidying_empties_solutions_and_only_them(tmp_path):
    nb = nbformat.v4.new_notebook()
    shown = nbformat.v4.new_code_cell("print(1)", execution_count=1)
    solution = nbformat.v4.new_code_cell("print(60)", execution_count=2)
    for cell, text in ((shown, "1\n"), (solution, "60\n")):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    solution.metadata = {"jupyter": {"source_hidden": True}}
    nb.cells = [shown, nbformat.v4.new_markdown_cell("**Solution** (click to reveal)"), solution]
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    assert tidy_notebooks.main(["--check", str(path)]) == 1
    assert tidy_notebooks.main([str(path)]) == 0
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].outputs[0].text == "1\n" and cells[0].execution_count == 1
    assert cells[2].outputs == [] and cells[2].execution_count is None
    assert cells[2].source == "print(60)"
