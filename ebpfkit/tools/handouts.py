"""``ebpfkit handouts``: every lesson executed, as self-contained HTML (and PDF) in one folder.

    ebpfkit handouts                      # ./handouts/, from the repository's notebooks/
    ebpfkit handouts out --pdf            # also a PDF of each, where Chromium is installed
    ebpfkit handouts out --replay         # from recordings: no root or eBPF needed
    ebpfkit handouts out --notebooks my-lessons --solutions hide

Runs each lesson in the ``ebpfkit`` kernel (``ebpfkit kernel install``); live, the ten
lessons take a few minutes. The work is in ``ebpfkit.handouts.build``.
"""

from __future__ import annotations

import argparse
import sys

from ..handouts import build

HELP = "execute every lesson and write it as self-contained HTML (and PDF) to hand out"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "outdir", nargs="?", default="handouts", help="the folder to write (./handouts)"
    )
    parser.add_argument(
        "--notebooks", metavar="DIR", help="the lessons' folder (the repository's notebooks/)"
    )
    parser.add_argument(
        "--replay", action="store_true", help="replay recordings instead of tracing live"
    )
    parser.add_argument(
        "--pdf", action="store_true", help="also print each to PDF with headless Chromium"
    )
    parser.add_argument("--kernel", help="the Jupyter kernel (default: the one each names)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds per cell (300)"
    )
    parser.add_argument(
        "--solutions",
        choices=("fold", "hide", "show"),
        default="fold",
        help="the exercises' solutions: folded (default), left out, or shown",
    )


def main(args: argparse.Namespace) -> int:
    made = build(
        args.outdir,
        args.notebooks,
        replay=args.replay,
        pdf=args.pdf,
        kernel=args.kernel,
        timeout=args.timeout,
        solutions=args.solutions,
        progress=lambda line: print(line, flush=True),
    )
    if made.pdf_skipped:
        print(f"PDF skipped: {made.pdf_skipped}")
    print(f"wrote {len(made.lessons)} handouts; open {made.index}")
    stopped = [lesson.notebook.stem for lesson in made.lessons if lesson.error]
    if stopped:
        print(f"ebpfkit handouts: stopped early: {', '.join(stopped)}", file=sys.stderr)
        return 1
    return 0
