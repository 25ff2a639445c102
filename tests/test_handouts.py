"""`ebpfkit handouts`: lessons executed in a real kernel and written as self-contained HTML.

Two small lessons stand in for the course's ten (which take minutes): one plots, fails on
purpose in a `raises-exception` cell and hides a solution; one traces getppid through a
ring buffer and plots what it saw. They run in a kernelspec installed for the test.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys

import nbformat
import pytest
from conftest import GETPPID_CELL as TRACE
from conftest import needs_root
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


@needs_root
def test_the_course_replayed_gives_every_lesson_a_page_with_its_plots(tmp_path):
    """The real lessons, replayed from their recordings (quick: nothing is compiled)."""
    lessons = handouts.find_notebooks()
    kernelspec.find("ebpfkit")  # installed by scripts/setup.sh, as for the lessons command
    made = handouts.build(tmp_path / "out", replay=True, timeout=120)
    assert made.ok, [(lesson.notebook.name, lesson.error) for lesson in made.lessons]
    assert [lesson.notebook for lesson in made.lessons] == lessons
    for lesson in made.lessons:
        page = lesson.html.read_text()
        # The saved notebook's plots (made live) come back, one image each, from the replay.
        saved = nbformat.read(lesson.notebook, as_version=4)
        plotted = [
            cell
            for cell in saved.cells
            if cell.cell_type == "code"
            for out in cell.outputs
            if "image/png" in out.get("data", {})
        ]
        # 00 plots tracefs' list of tracepoints, which a replaying lesson does not read.
        replayed = [cell for cell in plotted if "if listing:" not in cell.source]
        assert len(IMG.findall(page)) == len(replayed), lesson.notebook.name
        if "--recording" in "".join(c.source for c in saved.cells):
            assert "RECORDING made on" in page, lesson.notebook.name
    index = (tmp_path / "out/index.html").read_text()
    assert all(f'href="{lesson.html.name}"' in index for lesson in made.lessons)
