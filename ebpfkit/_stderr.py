"""Capture what BCC and clang write to standard error.

clang's diagnostics and the verifier log come from C++ through file descriptor 2,
not through ``sys.stderr``; in a notebook they would land in the server's log or
as hundreds of header warnings. We take them at the descriptor, keep the text,
and decide what the user sees.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator


class Captured:
    text: str = ""


@contextlib.contextmanager
def capture_stderr() -> Iterator[Captured]:
    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    py_err = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stderr(py_err):
                yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode(errors="replace") + py_err.getvalue()
