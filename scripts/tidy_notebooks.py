"""Keep the lessons' diffs about the lessons, and their answers hidden.

nbconvert and JupyterLab write ``metadata.execution`` (when each cell started and ended)
into every code cell they run, so a re-run changes every cell even where nothing else did:
those timestamps go, the outputs stay. Except in solutions: a code cell whose source is
hidden is an exercise's solution, and its output would show the answer under the question,
so its outputs and execution count go too (tests/test_lessons_exercises.py checks both).

    python3 scripts/tidy_notebooks.py [NOTEBOOK.ipynb ...]   (default: notebooks/*.ipynb)
    python3 scripts/tidy_notebooks.py --check ...            (exit 1 if any has timestamps)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

LESSONS = Path(__file__).resolve().parents[1] / "notebooks"


def tidy(nb: nbformat.NotebookNode) -> int:
    """Drop the timestamps, and solutions' outputs, in place; how many cells changed."""
    n = 0
    for cell in nb.cells:
        changed = cell.get("metadata", {}).pop("execution", None) is not None
        hidden = cell.get("metadata", {}).get("jupyter", {}).get("source_hidden")
        if cell.cell_type == "code" and hidden and (cell.outputs or cell.execution_count):
            cell.outputs, cell.execution_count = [], None
            changed = True
        n += changed
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; fail if untidy")
    args = parser.parse_args(argv)
    untidy = []
    for path in args.notebooks or sorted(LESSONS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if tidy(nb):
            untidy.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "has" if args.check else "had"
    for path in untidy:
        what = "execution timestamps or solutions' outputs"
        print(f"{path}: {verb} {what}" + ("" if args.check else " (removed)"))
    return 1 if args.check and untidy else 0


if __name__ == "__main__":
    sys.exit(main())
