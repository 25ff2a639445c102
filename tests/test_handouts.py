"""`ebpfkit handouts`: lessons executed in a real kernel and written as self-contained HTML.

Two small lessons stand in for the course's ten (which take minutes): one plots, fails on
purpose in a `raises-exception` cell and hides a solution; one traces getppid through a
ring buffer and plots what it saw. They run in a kernelspec installed for the test. The
course itself is built once, replayed, and its pages are checked on screen and in print
(headless Chromium through Playwright; the PDFs read with poppler's pdftotext and pdfimages).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from browser_lab import in_ci, launch, missing_browser
from helpers import GETPPID_CELL as TRACE
from helpers import needs_root
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ebpfkit import handouts, kernelspec
from ebpfkit.errors import BadArguments

KERNEL = "ebpfkit-handouts-test"
IMG = re.compile(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _notebook(*cells):
    meta = {"kernelspec": {"name": KERNEL, "display_name": KERNEL, "language": "python"}}
    return new_notebook(cells=list(cells), metadata=meta)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A kernelspec of our own, found through JUPYTER_PATH (here and in subprocesses)."""
    kernelspec.install(KERNEL, prefix=str(tmp_path / "prefix"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix/share/jupyter"))
    return {**os.environ}


@pytest.fixture
def lessons(tmp_path):
    folder = tmp_path / "lessons"
    folder.mkdir()
    plot = _notebook(
        new_markdown_cell("# A plot"),
        new_code_cell(
            "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
            "plt.plot([1, 4, 2, 8]); plt.title('squares-ish')"
        ),
        new_code_cell("open('missing-file-xyz')", metadata={"tags": ["raises-exception"]}),
        new_markdown_cell("**Solution** (click to reveal)"),
        new_code_cell(
            "print('the answer is', 6 * 7)", metadata={"jupyter": {"source_hidden": True}}
        ),
        new_code_cell("import os\nprint('cwd:', os.getcwd())"),
    )
    trace = _notebook(
        new_markdown_cell("# Tracing getppid"),
        new_code_cell("%load_ext ebpfkit"),
        new_code_cell(TRACE),
        new_code_cell(
            "assert 'python3' in set(seen.events.comm), seen.events\n"
            "seen.events.comm.value_counts().plot.bar(title='getppid calls per command')"
        ),
    )
    nbformat.write(plot, folder / "01-plot.ipynb")
    nbformat.write(trace, folder / "02-trace.ipynb")
    return folder


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ebpfkit", "handouts", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@needs_root
def test_one_self_contained_html_per_lesson_with_its_plots(tmp_path, env, lessons):
    out = tmp_path / "out"
    done = _cli(out, "--notebooks", lessons, "--pdf", env=env)
    assert done.returncode == 0, done.stdout + done.stderr

    pages = {p.name: p.read_text() for p in out.glob("*.html")}
    assert set(pages) == {"01-plot.html", "02-trace.html", "index.html"}
    for name in ("01-plot.html", "02-trace.html"):
        images = IMG.findall(pages[name])
        assert images, f"{name} has no inlined PNG"
        assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
        # Nothing fetched from elsewhere: no script, and no stylesheet or image by URL.
        assert "<script" not in pages[name]
        assert not re.search(r'<(link|img)[^>]+(href|src)="https?:', pages[name])
    plot, trace = pages["01-plot.html"], pages["02-trace.html"]
    assert "FileNotFoundError" in plot  # the raises-exception cell ran, and the lesson went on
    assert re.search(r"cwd: .*lessons", plot)  # cells ran in the lessons' folder
    assert '<details class="ebpfkit-solution">' in plot and "the answer is 42" in plot
    assert "received" in trace and "python3" in trace  # the %%bpf cell's result, executed

    index = pages["index.html"]
    assert 'href="01-plot.html"' in index and 'href="02-trace.html"' in index
    assert "A plot" in index and "Tracing getppid" in index
    if handouts.chromium():
        for name in ("01-plot", "02-trace"):
            assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
            assert f'href="{name}.pdf"' in index
    else:
        assert "PDF skipped: no Chromium" in done.stdout


def test_a_failing_cell_stops_its_lesson_and_says_so(tmp_path, env):
    folder = tmp_path / "lessons"
    folder.mkdir()
    nbformat.write(
        _notebook(
            new_markdown_cell("# Broken"),
            new_code_cell("raise RuntimeError('lesson bug 1234')"),
            new_code_cell("print('never reached')"),
        ),
        folder / "01-broken.ipynb",
    )
    done = _cli(tmp_path / "out", "--notebooks", folder, env=env)
    assert done.returncode == 1
    assert "01-broken: stopped: a cell failed: RuntimeError: lesson bug 1234" in done.stdout
    index = (tmp_path / "out/index.html").read_text()
    assert "stopped early" in index and "lesson bug 1234" in index
    page = (tmp_path / "out/01-broken.html").read_text()
    assert "lesson bug 1234" in page and "never reached" in page  # source shown, not run
    assert "never reached\n</pre>" not in page


def test_solutions_can_be_left_out(tmp_path, env, lessons):
    (lessons / "02-trace.ipynb").unlink()
    made = handouts.build(tmp_path / "out", lessons, solutions="hide")
    assert made.ok
    page = made.lessons[0].html.read_text()
    assert "the answer is" not in page and "<details" not in page


def test_bad_input_gets_one_clear_error(tmp_path, env):
    done = _cli(tmp_path / "out", "--notebooks", tmp_path / "nowhere", env=env)
    assert done.returncode == 2
    assert "no such folder" in done.stderr and "nowhere" in done.stderr
    assert "Traceback" not in done.stderr

    # The same errors, from the function the command calls.
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadArguments, match=r"no notebooks \(\*\.ipynb\) in .*empty"):
        handouts.build(tmp_path / "out", tmp_path / "empty")
    nbformat.write(_notebook(new_code_cell("1")), tmp_path / "empty/01.ipynb")
    with pytest.raises(BadArguments, match="no Jupyter kernel named 'nope'.*kernel install"):
        handouts.build(tmp_path / "out", tmp_path / "empty", kernel="nope")
    with pytest.raises(BadArguments, match="solutions"):
        handouts.build(tmp_path / "out", tmp_path / "empty", solutions="maybe")


def _saved_plots(notebook: Path) -> int:
    """How many plots the saved lesson shows that a replay draws again."""
    saved = nbformat.read(notebook, as_version=4)
    plotted = [
        cell
        for cell in saved.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]
    # 00 plots tracefs' list of tracepoints, which a replaying lesson does not read.
    return len([cell for cell in plotted if "if listing:" not in cell.source])


def _needs(*tools: str) -> None:
    """Skip without a command-line tool here; fail under CI, where setup.sh installs them."""
    for tool in tools:
        if shutil.which(tool) is None:
            why = f"no {tool} (apt-get install poppler-utils; scripts/setup.sh does it)"
            if in_ci():
                pytest.fail(f"CI must read the handouts' PDFs, but {why}")
            pytest.skip(why)


def _needs_browser() -> None:
    why = missing_browser()
    if why:
        if in_ci():
            pytest.fail(f"CI must print the handouts, but {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The real lessons, replayed from their recordings (quick: nothing is compiled), with
    their PDFs where Chromium is installed; built once for the tests below."""
    if os.geteuid() != 0:
        pytest.skip("the ebpfkit kernel runs as root")
    kernelspec.find("ebpfkit")  # installed by scripts/setup.sh, as for the lessons command
    out = tmp_path_factory.mktemp("course")
    return handouts.build(out, replay=True, pdf=True, timeout=120)


@needs_root
def test_the_course_replayed_gives_every_lesson_a_page_with_its_plots(course):
    made = course
    assert made.ok, [(lesson.notebook.name, lesson.error) for lesson in made.lessons]
    assert [lesson.notebook for lesson in made.lessons] == handouts.find_notebooks()
    for lesson in made.lessons:
        page = lesson.html.read_text()
        # The saved notebook's plots (made live) come back, one image each, from the replay.
        # Solutions' outputs are never saved (they would give the answer away): their plots,
        # drawn in the folds, are not among the saved ones.
        outside = re.sub(r'<details class="ebpfkit-solution">.*?</details>', "", page, flags=re.S)
        assert len(IMG.findall(outside)) == _saved_plots(lesson.notebook), lesson.notebook.name
        cells = nbformat.read(lesson.notebook, as_version=4).cells
        sources = "".join(c.source for c in cells if c.cell_type == "code")  # not the prose
        if "--recording" in sources:
            assert "RECORDING made on" in page, lesson.notebook.name
    index = made.index.read_text()
    assert all(f'href="{lesson.html.name}"' in index for lesson in made.lessons)


# Every element whose content is wider than its box, or that reaches past the page's sides.
OVERFLOWING = """() => {
  const found = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (el.clientWidth === 0) continue;
    const box = el.getBoundingClientRect();
    if (el.scrollWidth > el.clientWidth + 1 || box.left < -1 || box.right > innerWidth + 1)
      found.push(`${el.tagName}.${el.className} content ${el.scrollWidth} px in ${el.clientWidth}`
        + ` px, at ${Math.round(box.left)}..${Math.round(box.right)} px: `
        + JSON.stringify((el.textContent || "").trim().slice(0, 80)));
  }
  return found;
}"""


def _printable_px() -> tuple[int, int]:
    """The width and height between the margins of the handouts' paper, in CSS pixels."""
    width, height = handouts.PAGE_MM
    top, right, bottom, left = handouts.MARGINS_MM
    return int((width - left - right) / 25.4 * 96), int((height - top - bottom) / 25.4 * 96)


@needs_root
def test_the_course_prints_whole(course, tmp_path):
    """Printed, no lesson loses content: nothing wider than its box, every plot in the PDF."""
    _needs_browser()
    _needs("pdfimages")
    from playwright.sync_api import sync_playwright

    assert course.ok, [(lesson.notebook.name, lesson.error) for lesson in course.lessons]
    assert not course.pdf_skipped, course.pdf_skipped
    width, height = _printable_px()
    with sync_playwright() as pw:
        browser = launch(pw, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.set_viewport_size({"width": width, "height": height})
            page.emulate_media(media="print")
            for lesson in course.lessons:
                page.goto(lesson.html.resolve().as_uri())
                assert page.evaluate("matchMedia('print').matches")
                wide = page.evaluate(OVERFLOWING)
                assert not wide, f"{lesson.html.name} in print:\n" + "\n".join(wide[:20])
        finally:
            browser.close()
    for lesson in course.lessons:
        listed = subprocess.run(
            ["pdfimages", "-list", str(lesson.pdf)], capture_output=True, text=True, check=True
        ).stdout.splitlines()[2:]  # two heading lines, then one line per image drawn
        images = [row for row in listed if row.split()[2] == "image"]  # not the alpha masks
        assert len(images) == _saved_plots(lesson.notebook), lesson.pdf.name


WORDS = re.compile(
    r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>'
)
PAGE = re.compile(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', re.S)


def test_a_long_line_and_a_wide_table_print_whole(tmp_path, env):
    """A code line far longer than the page and a 30-column DataFrame: every character of
    both is in the PDF, between the margins; the title and page numbers are in the margins."""
    _needs("pdftotext")
    if handouts.chromium() is None:
        if in_ci():
            pytest.fail("CI must print the handouts, but there is no Chromium")
        pytest.skip("no Chromium to print with")
    words = " ".join(f"word{i:03d}" for i in range(70))
    blob = "".join(f"{i:04d}" for i in range(60))  # 240 characters and no space to break at
    long_line = f'label = "{words}"; blob = "{blob}"; print(len(label), len(blob))'
    columns = [f"col_{c:02d}" for c in range(30)]
    values = [f"r{r}c{c:02d}" for r in range(4) for c in range(30)]
    table = (
        "import pandas as pd\n"
        "pd.set_option('display.max_columns', None)\n"
        f"pd.DataFrame([[f'r{{r}}c{{c:02d}}' for c in range(30)] for r in range(4)],"
        f" columns={columns!r})"
    )
    title = "Printing: long lines & wide tables"
    folder = tmp_path / "lessons"
    folder.mkdir()
    nbformat.write(
        _notebook(new_markdown_cell(f"# {title}"), new_code_cell(long_line), new_code_cell(table)),
        folder / "01-print.ipynb",
    )
    made = handouts.build(tmp_path / "out", folder, pdf=True)
    assert made.ok and not made.pdf_skipped, (made.lessons[0].error, made.pdf_skipped)
    pdf = made.lessons[0].pdf

    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = re.sub(r"\s+", "", text)
    assert re.sub(r"\s+", "", long_line) in flat  # the line, wrapped but whole, in order
    assert f"{len(words)}{len(blob)}" in flat  # and what it printed

    bbox = subprocess.run(
        ["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    pages = PAGE.findall(bbox)
    assert pages
    mm = 72 / 25.4
    top, right, bottom, left = (m * mm for m in handouts.MARGINS_MM)
    slack = 1.5  # points: a glyph's box may stand a little out of its line's
    found = []
    for number, (page_width, page_height, content) in enumerate(pages, 1):
        page_width, page_height = float(page_width), float(page_height)
        header, footer = [], []
        for x0, y0, x1, y1, word in WORDS.findall(content):
            x0, y0, x1, y1 = map(float, (x0, y0, x1, y1))
            assert 0 <= x0 and x1 <= page_width and 0 <= y0 and y1 <= page_height, word
            if y1 <= top:
                header.append(word)
            elif y0 >= page_height - bottom:
                footer.append(word)
            else:  # the lesson itself: between the margins, on every side
                assert left - slack <= x0 and x1 <= page_width - right + slack, (number, word)
                found.append(word)
        # In the margins: the lesson's title and its file's name above, the page number below.
        assert " ".join(header) == f"{title.replace('&', '&amp;')} 01-print", number
        assert " ".join(footer) == f"page {number} of {len(pages)}"
    # Every heading and cell of the DataFrame, whole (no cell wrapped mid-word).
    assert set(columns + values) <= set(found), set(columns + values) - set(found)


# The page as it would be without the print markup: line spans unwrapped, the print copies of
# wide tables removed, the screen copies unwrapped, the keep-together class dropped.
WITHOUT_PRINT_MARKUP = """() => {
  const unwrap = (el) => el.replaceWith(...el.childNodes);
  document.querySelectorAll(".ebpfkit-print").forEach((el) => el.remove());
  document.querySelectorAll(".ebpfkit-screen, .ebpfkit-line").forEach(unwrap);
  document.querySelectorAll("pre.ebpfkit-keep").forEach((el) => el.removeAttribute("class"));
  return document.querySelectorAll("[class*=ebpfkit-]:not(details, summary)").length;
}"""


def test_on_screen_the_print_markup_changes_nothing(tmp_path, env):
    """The handout looks the same on screen with and without what it carries for print."""
    _needs_browser()
    from playwright.sync_api import sync_playwright

    folder = tmp_path / "lessons"
    folder.mkdir()
    nbformat.write(
        _notebook(
            new_markdown_cell("# Screen\n\n```\nfenced code, long " + "x" * 150 + "\nline 2\n```"),
            new_code_cell('doc = """one\ntwo ' + "y" * 150 + '"""\nprint(doc)'),
            new_code_cell(
                "import pandas as pd\npd.set_option('display.max_columns', None)\n"
                "pd.DataFrame([[c * 1000 for c in range(25)]] * 3)"
            ),
        ),
        folder / "01-screen.ipynb",
    )
    made = handouts.build(tmp_path / "out", folder)
    assert made.ok, made.lessons[0].error
    page_html = made.lessons[0].html.read_text()
    # What there is to take away: lines marked, and the wide table copied for print.
    assert 'class="ebpfkit-line"' in page_html and 'class="ebpfkit-print"' in page_html
    with sync_playwright() as pw:
        browser = launch(pw, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.goto(made.lessons[0].html.resolve().as_uri())
            marked = page.screenshot(full_page=True)
            assert page.evaluate(WITHOUT_PRINT_MARKUP) == 0
            plain = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert marked == plain
