"""Handouts: every lesson executed, with its plots, as one self-contained HTML file each.

``build(outdir)`` runs each notebook of the lessons folder top to bottom in the ``ebpfkit``
kernel (the folder is the working directory, as in JupyterLab; a cell tagged
``raises-exception`` may fail, any other failure stops that lesson), then writes
``NN-name.html`` with every image inlined as ``data:`` URLs and no script or style fetched
from anywhere, an ``index.html`` linking them, and with ``pdf=True`` a PDF of each printed
by headless Chromium where it is installed.

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
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from . import kernelspec
from .errors import BadArguments

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
            lesson.html.write_text(_render(nb, path.stem, solutions), encoding="utf-8")
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

    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=timeout,
        resources={"metadata": {"path": str(cwd)}},
        record_timing=False,
    )
    try:
        client.execute()
    except CellExecutionError as e:
        # The exception's line; the cell's own output in the page keeps the traceback.
        return f"a cell failed: {e.ename}: {e.evalue}"
    except CellTimeoutError:
        return f"a cell ran longer than {timeout:g} s"
    except DeadKernelError as e:
        return f"the kernel died ({e})"
    return ""


def _prepare(nb, solutions: str) -> None:
    """Widgets as their text fallback (no widget manager in a static page); solutions folded."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and WIDGET_VIEW in data and len(data) > 1:
                del data[WIDGET_VIEW]
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


def _render(nb, name: str, solutions: str) -> str:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    _prepare(nb, solutions)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"ebpfkit-handout.html.j2": TEMPLATE})],
        template_file="ebpfkit-handout.html.j2",
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}})
    return body


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
