"""Keep the lessons' diffs about the lessons: drop each cell's execution timestamps.

nbconvert and JupyterLab write ``metadata.execution`` (when each cell started and ended)
into every code cell they run, so a re-run changes every cell even where nothing else did.
The outputs stay; only those timestamps go.

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
    """Drop the timestamps in place; how many cells had them."""
    n = 0
    for cell in nb.cells:
        if cell.get("metadata", {}).pop("execution", None) is not None:
            n += 1
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
        print(f"{path}: {verb} execution timestamps" + ("" if args.check else " (removed)"))
    return 1 if args.check and untidy else 0


if __name__ == "__main__":
    sys.exit(main())
