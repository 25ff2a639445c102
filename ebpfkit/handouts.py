"""Handouts: every lesson executed, with its plots, as one self-contained HTML file each.

``build(outdir)`` runs each notebook of the lessons folder top to bottom in the ``ebpfkit``
kernel (the folder is the working directory, as in JupyterLab; a cell tagged
``raises-exception`` may fail, any other failure stops that lesson), then writes
``NN-name.html`` with every image inlined as ``data:`` URLs and no script or style fetched
from anywhere, an ``index.html`` linking them, and with ``pdf=True`` a PDF of each printed
by headless Chromium where it is installed.

Printed (the PDF, or the HTML from a browser) a page has print styles of its own; the screen
keeps the lab's look. On A4, with the lesson's title and file name in the top margin and
"page N of M" in the bottom one: long code and output lines wrap inside their cell, each
continuation marked by an orange bar on its left; DataFrames too wide for the page print as
runs of columns that fit, the index repeated; images are scaled to the page's width; there
are no scroll bars; a cell's input is kept with the start of its output where it can be.

Solutions (code cells whose source the notebook hides, ``jupyter.source_hidden``) are folded
under "show the solution" by default; ``solutions="hide"`` leaves them out, ``"show"`` shows
them open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import html
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from . import kernelspec
from .errors import BadArguments

# nbformat, nbclient, nbconvert, jinja2 and zmq are imported where they are used: they are
# heavy, and ``ebpfkit --help`` imports this module through its ``handouts`` command.

REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOLUTIONS = ("fold", "hide", "show")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless Chromium on a machine with no display, no network but the package registries, and
# nobody's profile: without the background-networking flags its own connections stall it.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
CHROMIUM_FLAGS = (*HEADLESS_FLAGS, "--no-pdf-header-footer")  # for printing handouts

# The lab template without the scripts it would fetch from a CDN (require.js, MathJax,
# mermaid, the widget manager): a handout must open from a USB stick on a train.
TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
details.ebpfkit-solution { border-left: 3px solid #4a90d9; margin: 0.5em 0; padding-left: 0.5em; }
details.ebpfkit-solution > summary {
  cursor: pointer; color: #4a90d9; font-weight: bold; font-family: var(--jp-ui-font-family);
}
@media print { details.ebpfkit-solution { display: block; } }
</style>
{%- endblock extra_css -%}
{%- block html_head_css -%}
<style type="text/css">
{{ resources.ebpfkit_print_css }}
</style>
{%- endblock html_head_css -%}
{% block codecell %}
{%- set fold = cell.metadata.get('ebpfkit_fold', '') -%}
{%- if 'open' in fold -%}
<details class="ebpfkit-solution"><summary>show the solution</summary>
{%- endif -%}
{{ super() }}
{%- if 'close' in fold -%}
</details>
{%- endif -%}
{% endblock codecell %}
"""

# Paper. The page's own @page rule sets it, with the margins and what is printed in them
# (headless Chromium's --print-to-pdf follows it), so the PDF and a teacher's Ctrl-P of the
# HTML give the same pages.
PAGE_SIZE = "A4"
PAGE_MM = (210.0, 297.0)  # width, height
MARGINS_MM = (16.0, 14.0, 16.0, 14.0)  # top, right, bottom, left: the title and page number
# go in the top and bottom margins, the lesson between them.
# Tables in print: their type size, and the width (CSS px) a table is split to fit: the page's
# width between the margins, less the prompt column and the output's padding.
TABLE_FONT_PX = 11.0
TABLE_WIDTH_PX = (PAGE_MM[0] - MARGINS_MM[1] - MARGINS_MM[3]) / 25.4 * 96 - 64 - 40

# Print only (the screen keeps the lab's look). Every wrapped source or output line is a
# block of its own in print (`_mark_lines`), so a line that runs on past the cell's edge wraps
# and its continuation carries an orange bar down its left side. Wide DataFrames print as
# several narrower tables, the index repeated (`_split_wide_tables`); whatever is still too
# wide wraps inside its cells.
PRINT_CSS = """\
@page {
  size: %(size)s;
  margin: %(margins)s;
  @top-left { content: %(title)s; font: 8pt sans-serif; color: #555; }
  @top-right { content: %(name)s; font: 8pt sans-serif; color: #555; }
  @bottom-right {
    content: "page " counter(page) " of " counter(pages); font: 8pt sans-serif; color: #555;
  }
}
.ebpfkit-print { display: none; }
@media print {
  body.jp-Notebook { padding: 0; margin: 0; }
  * { overflow: visible !important; }
  .ebpfkit-screen { display: none; }
  .ebpfkit-print { display: block; }
  pre {
    white-space: pre-wrap !important; overflow-wrap: anywhere !important;
    word-break: normal !important;
  }
  .ebpfkit-line {
    display: block; position: relative; padding-left: 1.6em; text-indent: -0.8em;
    break-inside: avoid;
  }
  .ebpfkit-line::after {
    content: ""; position: absolute; left: 0.3em; top: 1lh; bottom: 0;
    border-left: 2px solid #d9822b;
  }
  img, svg { max-width: 100%% !important; height: auto !important; break-inside: avoid; }
  .jp-RenderedHTMLCommon table {
    table-layout: auto !important; width: auto !important; max-width: 100%%;
    font-size: %(table_px)spx; margin-left: 0; margin-right: auto;
  }
  .jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th {
    padding: 0.2em 0.5em; overflow-wrap: anywhere; max-width: none;
  }
  table.ebpfkit-part { margin-bottom: 0.8em; }
  table.ebpfkit-part caption {
    caption-side: top; text-align: left; font-size: 0.9em; color: #555; padding: 0.2em 0;
  }
  h1, h2, h3, h4, h5, h6 { break-after: avoid; }
  .jp-Cell-inputWrapper { break-after: avoid; }
  pre.ebpfkit-keep { break-inside: avoid; }
  /* The lab keeps each output whole, which sends a long one to the next page, away from
     its input: here it follows the input, and only short blocks are kept whole. */
  .jp-OutputArea-child { break-inside: auto; }
  .jp-RenderedImage, .jp-RenderedHTMLCommon table, tr { break-inside: avoid; }
}
"""


@dataclasses.dataclass
class Lesson:
    """One notebook's handout: where it came from, what was written, how the run went."""

    notebook: Path
    title: str
    html: Path | None = None
    pdf: Path | None = None
    error: str = ""  # why the run stopped early; empty when every cell ran
    seconds: float = 0.0


@dataclasses.dataclass
class Handouts:
    folder: Path
    lessons: list[Lesson]
    index: Path
    pdf_skipped: str = ""  # why there are no PDFs, when they were asked for

    @property
    def ok(self) -> bool:
        return all(not lesson.error for lesson in self.lessons)


def find_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    """The lessons in ``folder`` (default: the repository's notebooks/), in order."""
    where = Path(folder) if folder is not None else REPO_NOTEBOOKS
    if not where.is_dir():
        raise BadArguments(f"no such folder {str(where)!r}: give the folder of the lessons")
    found = sorted(p for p in where.glob("*.ipynb") if not p.name.startswith("."))
    if not found:
        raise BadArguments(f"no notebooks (*.ipynb) in {str(where)!r}: give the lessons' folder")
    return found


def chromium() -> str | None:
    """The headless browser that prints PDFs, if this machine has one."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def build(
    outdir: str | os.PathLike = "handouts",
    notebooks: str | os.PathLike | None = None,
    *,
    replay: bool = False,
    pdf: bool = False,
    kernel: str | None = None,
    timeout: float = 300.0,
    solutions: str = "fold",
    progress: Callable[[str], None] | None = None,
) -> Handouts:
    """Execute every lesson and write the handouts folder (see the module's docstring).

    ``kernel`` defaults to the one each notebook names (``ebpfkit``); ``replay`` runs the
    kernel with ``EBPFKIT_MODE=replay``; ``timeout`` is per cell, in seconds.
    """
    import nbformat

    if solutions not in SOLUTIONS:
        raise BadArguments(f"solutions={solutions!r}: give one of {', '.join(SOLUTIONS)}")
    if timeout <= 0:
        raise BadArguments(f"timeout={timeout}: give seconds per cell, more than 0")
    paths = find_notebooks(notebooks)
    say = progress or (lambda line: None)
    books = [nbformat.read(p, as_version=4) for p in paths]
    kernels = {kernel or _kernel_of(nb) for nb in books}
    for name in sorted(kernels):
        kernelspec.find(name)  # a missing kernel fails here, once, before any lesson runs
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    printer = chromium() if pdf else None
    skipped = ""
    if pdf and printer is None:
        skipped = "no Chromium on this machine (apt-get install chromium), so no PDF"
    lessons = []
    with _environment("EBPFKIT_MODE", "replay" if replay else None):
        for path, nb in zip(paths, books):
            lesson = Lesson(path, _title(nb, path))
            start = time.monotonic()
            lesson.error = _execute(nb, kernel or _kernel_of(nb), path.parent, timeout)
            lesson.seconds = time.monotonic() - start
            lesson.html = out / f"{path.stem}.html"
            lesson.html.write_text(
                _render(nb, path.stem, solutions, lesson.title), encoding="utf-8"
            )
            if printer:
                lesson.pdf, why = _print_pdf(printer, lesson.html)
                skipped = skipped or why
            say(
                f"{path.stem}: "
                + (f"stopped: {lesson.error}" if lesson.error else "ok")
                + f" ({lesson.seconds:.0f} s)"
            )
            lessons.append(lesson)
    index = out / "index.html"
    index.write_text(_index(lessons, replay), encoding="utf-8")
    return Handouts(out, lessons, index, skipped)


def _kernel_of(nb) -> str:
    return nb.metadata.get("kernelspec", {}).get("name") or kernelspec.NAME


def _title(nb, path: Path) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


@contextlib.contextmanager
def _environment(key: str, value: str | None) -> Iterator[None]:
    """``key=value`` in this process's environment (which the kernels inherit), for a while."""
    if value is None:
        yield
        return
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _execute(nb, kernel: str, cwd: Path, timeout: float) -> str:
    """Run every cell in place; returns why it stopped early, or '' when all ran."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    try:
        with _quiet_transport(kernel) as config:
            NotebookClient(
                nb,
                kernel_name=kernel,
                timeout=timeout,
                resources={"metadata": {"path": str(cwd)}},
                record_timing=False,
                config=config,
            ).execute()
    except CellExecutionError as e:
        # The exception's line; the cell's own output in the page keeps the traceback.
        return f"a cell failed: {e.ename}: {e.evalue}"
    except CellTimeoutError:
        return f"a cell ran longer than {timeout:g} s"
    except DeadKernelError as e:
        return f"the kernel died ({e})"
    return ""


@contextlib.contextmanager
def _quiet_transport(kernel: str) -> Iterator:
    """How to talk to the kernel without it warning that anyone on the machine could listen.

    ipykernel warns, on the user's terminal, about a kernel that listens on plain TCP. A
    kernel whose spec says it speaks CurveZMQ (ours do) gets keys and stays on TCP, which
    also reaches a kernel that runs as root through sudo; any other kernel gets IPC sockets
    in a folder of this run's that only this user can open.
    """
    import zmq
    from traitlets.config import Config

    config = Config()
    _, spec = kernelspec.find(kernel)
    said = spec.get("metadata", {}).get("supported_encryption") or ()
    said = [said] if isinstance(said, str) else said
    if zmq.has("curve") and "curve" in {str(s).strip().lower() for s in said}:
        config.KernelManager.transport_encryption = "auto"
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="ebpfkit-kernel-") as folder:
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(folder) / "kernel")  # absolute: the kernel's cwd differs
        yield config


def _prepare(nb, solutions: str) -> None:
    """Widgets as their text fallback (no widget manager in a static page); solutions folded."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and WIDGET_VIEW in data and len(data) > 1:
                del data[WIDGET_VIEW]
            if data and "dataframe" in str(data.get("text/html", "")):
                markup = data["text/html"]
                markup = "".join(markup) if isinstance(markup, list) else markup
                data["text/html"] = _split_wide_tables(markup)
        if cell.cell_type == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if o.get("data") != {}]
    hidden = [
        c.cell_type == "code" and c.metadata.get("jupyter", {}).get("source_hidden", False)
        for c in nb.cells
    ]
    if solutions == "hide":
        nb.cells = [c for c, h in zip(nb.cells, hidden) if not h]
        return
    if solutions == "show":
        return
    # One fold around each run of consecutive hidden cells.
    for i, cell in enumerate(nb.cells):
        if hidden[i]:
            mark = ("open " if i == 0 or not hidden[i - 1] else "") + (
                "close" if i + 1 == len(nb.cells) or not hidden[i + 1] else ""
            )
            cell.metadata["ebpfkit_fold"] = mark.strip()


def _render(nb, name: str, solutions: str, title: str = "") -> str:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    _prepare(nb, solutions)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"ebpfkit-handout.html.j2": TEMPLATE})],
        template_file="ebpfkit-handout.html.j2",
        embed_images=True,
    )
    resources = {"metadata": {"name": name}, "ebpfkit_print_css": _print_css(title or name, name)}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return _mark_lines(body)


def _print_css(title: str, name: str) -> str:
    top, right, bottom, left = MARGINS_MM
    return PRINT_CSS % {
        "size": PAGE_SIZE,
        "margins": f"{top:g}mm {right:g}mm {bottom:g}mm {left:g}mm",
        "title": _css_string(title),
        "name": _css_string(name),
        "table_px": f"{TABLE_FONT_PX:g}",
    }


def _css_string(text: str) -> str:
    """``text`` as a CSS string: anything but letters, digits and spaces as a hex escape, so
    no quote, backslash or ``</style>`` in a lesson's title can end it early."""
    return '"' + "".join(c if c.isalnum() or c == " " else f"\\{ord(c):x} " for c in text) + '"'


PRE = re.compile(r"(<pre\b[^>]*>)(.*?)(</pre>)", re.S)
TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)\b[^>]*?(/?)>")
VOID = {"br", "img", "wbr", "hr", "input"}
WHOLE_CODE = re.compile(r"(<code\b[^>]*>)(.*)(</code>)", re.S)
KEEP_LINES = 12  # a <pre> of this many lines or fewer is not split across pages in print


def _mark_lines(page: str) -> str:
    """Each line of every <pre> in the page's body in a ``span.ebpfkit-line`` of its own.

    On screen the spans are plain inline text and change nothing. In print they are blocks,
    so a line too long for the page wraps inside its own block, which can mark the lines it
    continues on. Markup open across a line's end (pygments' string tokens, ANSI colours)
    is closed before it and opened again after, so every span holds balanced HTML.
    """
    head, body_tag, body = page.partition("<body")
    if not body_tag:
        return page

    def lines(match: re.Match) -> str:
        opening, inner, closing = match.groups()
        keep = opening == "<pre>"
        # Markdown's <pre><code>: the lines go inside the <code>, which stays the <pre>'s child.
        whole = WHOLE_CODE.fullmatch(inner)
        if whole and "<code" not in whole.group(2):
            opening, inner, closing = (
                opening + whole.group(1),
                whole.group(2),
                whole.group(3) + closing,
            )
        marked, count = _lines(inner)
        if keep and count <= KEEP_LINES:
            opening = '<pre class="ebpfkit-keep">' + opening[len("<pre>") :]
        return opening + marked + closing

    return head + body_tag + PRE.sub(lines, body)


def _lines(inner: str) -> tuple[str, int]:
    lead = ""
    if inner.startswith("\n"):  # HTML drops a newline right after <pre>: keep it outside
        lead, inner = "\n", inner[1:]
    done: list[str] = []
    line: list[str] = []
    has_text = False
    stack: list[tuple[str, str]] = []  # the open tags: (name, the tag as written)
    for piece in re.split(r"(<[^>]*>)", inner):
        if piece.startswith("<"):
            line.append(piece)
            tag = TAG.match(piece)
            if tag is None:
                continue
            closing, name, self_closing = tag.groups()
            name = name.lower()
            if closing:
                for i in range(len(stack) - 1, -1, -1):
                    if stack[i][0] == name:
                        del stack[i:]
                        break
            elif not self_closing and name not in VOID:
                stack.append((name, piece))
            continue
        for i, text in enumerate(piece.split("\n")):
            if i:
                line.append("\n" + "".join(f"</{n}>" for n, _ in reversed(stack)))
                done.append('<span class="ebpfkit-line">' + "".join(line) + "</span>")
                line = [t for _, t in stack]
                has_text = False
            if text:
                line.append(text)
                has_text = True
    tail = "".join(line)
    if has_text:
        done.append('<span class="ebpfkit-line">' + tail + "</span>")
        tail = ""
    return lead + "".join(done) + tail, len(done)


def _split_wide_tables(markup: str) -> str:
    """Each DataFrame table too wide for a printed page, also as narrower tables for print.

    The table stays as it is for the screen (``div.ebpfkit-screen``); print shows instead
    (``div.ebpfkit-print``) runs of its columns that fit the page's width, each with the
    index columns again. Widths are estimated from the cells' lengths in characters. Tables
    with merged cells (MultiIndex) are left whole: in print they wrap inside their cells.
    """
    return DATAFRAME.sub(_split_table, markup)


DATAFRAME = re.compile(r'<table\b[^>]*\bclass="dataframe"[^>]*>.*?</table>', re.S)
SECTION = re.compile(r"(<(thead|tbody)\b[^>]*>)(.*?)</\2>", re.S)
ROW = re.compile(r"(<tr\b[^>]*>)(.*?)</tr>", re.S)
CELL = re.compile(r"<(t[hd])\b([^>]*)>(.*?)</\1>", re.S)
MERGED = re.compile(r"\b(?:col|row)span\s*=")
CHAR_EM = 0.62  # a character's width in the table's sans-serif type, roughly (digits: 0.55)


def _column_runs(widths: list[float], first: int, room: float) -> list[list[int]]:
    """The columns from ``first`` on, cut into runs whose widths add up to ``room`` at most."""
    runs: list[list[int]] = [[]]
    used = 0.0
    for column in range(first, len(widths)):
        if runs[-1] and used + widths[column] > room:
            runs.append([])
            used = 0.0
        runs[-1].append(column)
        used += widths[column]
    return runs


def _split_table(match: re.Match) -> str:
    """A DataFrame's table too wide for the printed page, as runs of columns that fit."""
    table = match.group(0)
    sections = []  # (opening tag, name, rows); each row is (opening tag, cells)
    for section in SECTION.finditer(table):
        rows = [
            (row.group(1), list(CELL.finditer(row.group(2))))
            for row in ROW.finditer(section.group(3))
        ]
        sections.append((section.group(1), section.group(2), rows))
    rows = [row for _, _, section_rows in sections for row in section_rows]
    body = [
        cells for _, name, section_rows in sections if name == "tbody" for _, cells in section_rows
    ]
    if not rows or not body:
        return table
    width = len(rows[0][1])
    if any(
        len(cells) != width or any(MERGED.search(c.group(2)) for c in cells) for _, cells in rows
    ):
        return table
    index = 0
    while index < width and body[0][index].group(1) == "th":
        index += 1

    def px(column: int) -> float:
        longest = max(
            len(html.unescape(re.sub(r"<[^>]+>", "", c[column].group(3)))) for _, c in rows
        )
        return (longest * CHAR_EM + 1.0) * TABLE_FONT_PX + 1  # 0.5 em padding a side, a border

    widths = [px(c) for c in range(width)]
    room = TABLE_WIDTH_PX - sum(widths[:index])
    if sum(widths[index:]) <= room or width - index < 2:
        return table
    runs = _column_runs(widths, index, room)
    opening = re.match(r"<table\b[^>]*>", table).group(0)
    opening = opening.replace('class="dataframe"', 'class="dataframe ebpfkit-part"', 1)
    data = width - index
    parts = []
    for run in runs:
        caption = f"columns {run[0] - index + 1}-{run[-1] - index + 1} of {data}"
        keep = list(range(index)) + run
        out = [opening, f"<caption>{caption}</caption>"]
        for section_opening, name, section_rows in sections:
            out.append(section_opening)
            for row_opening, cells in section_rows:
                out.append(row_opening + "".join(cells[c].group(0) for c in keep) + "</tr>")
            out.append(f"</{name}>")
        out.append("</table>")
        parts.append("".join(out))
    return (
        f'<div class="ebpfkit-screen">{table}</div>'
        f'<div class="ebpfkit-print">{"".join(parts)}</div>'
    )


def _print_pdf(browser: str, page: Path) -> tuple[Path | None, str]:
    """Print ``page`` to a PDF beside it; returns (the PDF or None, why not)."""
    target = page.with_suffix(".pdf")
    target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ebpfkit-chromium-") as profile:
        try:
            done = subprocess.run(
                [
                    browser,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--print-to-pdf={target}",
                    page.resolve().as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=180,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"Chromium ({browser}) did not print {page.name}: {e}"
    if target.exists() and target.read_bytes()[:5] == b"%PDF-":
        return target, ""
    why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return None, f"Chromium ({browser}) did not print {page.name}: {why}"


def _index(lessons: list[Lesson], replay: bool) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    how = "replayed from recordings" if replay else f"run live on Linux {os.uname().release}"
    rows = []
    for lesson in lessons:
        links = f'<a href="{html.escape(quote(lesson.html.name))}">HTML</a>'
        if lesson.pdf:
            links += f' · <a href="{html.escape(quote(lesson.pdf.name))}">PDF</a>'
        state = (
            f'<span class="stopped">stopped early: {html.escape(lesson.error)}</span>'
            if lesson.error
            else ""
        )
        rows.append(
            f"<tr><td>{html.escape(lesson.notebook.stem)}</td>"
            f"<td>{html.escape(lesson.title)}</td><td>{links}</td><td>{state}</td></tr>"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ebpfkit lessons: handouts</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; }}
td {{ padding: 0.3em 1em 0.3em 0; vertical-align: top; }}
.stopped {{ color: #b00; }}
</style>
</head>
<body>
<h1>ebpfkit lessons</h1>
<p>Each lesson executed top to bottom, {html.escape(how)}, on {when}.</p>
<table>
{chr(10).join(rows)}
</table>
</body>
</html>
"""
