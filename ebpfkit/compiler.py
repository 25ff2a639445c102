"""BCC's compiler in a process of its own.

clang and LLVM run inside libbcc, and LLVM ends its process on some errors (a
``memset`` it cannot lower, signed division in the BPF backend) with exit(1) or
abort(). In a notebook that process would be the kernel: "the kernel died", every
variable gone. So the notebook never compiles: one long-lived child does, started
with exec (a fork of the notebook would copy its threads' locks and its memory),
and restarted when it dies. It sends back a ``bytecode.Bytecode``; loader.py loads
that in the notebook's process without clang.

Whatever happens to the child (an error, exit, abort, a signal, a hang past
``COMPILE_SECONDS``, running out of memory) comes back as ``Failed``: what clang
printed and how the child ended, for program.py to explain in the user's terms.

The protocol is one JSON line each way over the child's stdin and stdout. What the
compiler prints goes to a file the parent reads after each request.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

from . import bytecode

# Longer than any lesson's compile (about a second) by far; a hang ends here.
COMPILE_SECONDS = 120.0
# The child may use at most this share of the machine's memory: LLVM on a huge
# unrolled loop grows until the kernel's OOM killer picks a victim, maybe the notebook.
MEMORY_SHARE = 0.5


class Failed(Exception):
    """The compile did not give a program. ``stderr``: what clang and BCC printed;
    ``died``: how the child ended, if it did ("" when it just reported an error)."""

    def __init__(self, message: str, stderr: str = "", died: str = ""):
        super().__init__(message)
        self.stderr, self.died = stderr, died


# ---------------------------------------------------------------- the parent's side


class Compiler:
    """The client of one compile process, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._err = None  # the child's stderr: a file we read after each request
        self._lock = threading.Lock()
        self.compiles = 0  # requests answered by the child (the cache's hits are not)

    def start(self) -> None:
        """Start the child now, and wait until it is ready (it imports BCC): done at
        ``%load_ext``, so the first cell's compile does not pay for it, and nothing of
        the child's start shows up in that cell's trace."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop()
        self._err = tempfile.TemporaryFile()
        # The folder holding this package, first on the child's path: an editable
        # install, a wheel and a plain checkout all import this very ebpfkit.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p),
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ebpfkit.compiler", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
            close_fds=True,
            # Its own process group: signals for the notebook's group (ipykernel's
            # shutdown terminates and waits for that group's children, and would wait on
            # this one as a zombie) are not for it; it ends with its parent (serve).
            start_new_session=True,
        )
        try:
            json.loads(self._read_line(self._proc))  # {"ready": true}: BCC imported
        except (EOFError, TimeoutError, ValueError):
            stderr = self._stderr()
            died = _how_it_ended(self._proc)
            self._stop()
            raise Failed("the compile process did not start", stderr, died=died) from None
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._err is not None:
            self._err.close()
            self._err = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def compile(self, text: str, cflags: list[str], verify: tuple[str, int] | None = None):
        """The Bytecode of ``text``; Failed with clang's words otherwise.

        ``verify=(function, program type)``: also load that function in the child,
        with BCC's own BTF line info, for a verifier log that quotes the source
        (asked only after the notebook's load was refused).
        """
        request = {"text": text, "cflags": cflags, "verify": verify}
        with self._lock:
            reply, stderr = self._ask(request)
        self.compiles += 1
        if not reply.get("ok"):
            raise Failed(reply.get("error", "BCC failed"), stderr)
        if verify is not None:
            return stderr
        return bytecode.Bytecode.from_json(reply["bytecode"])

    def _ask(self, request: dict) -> tuple[dict, str]:
        proc = self._ensure()
        self._err.truncate(0)
        self._err.seek(0)  # the child shares this offset: it writes from the start
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            line = self._read_line(proc)
        except BaseException as e:
            # Ctrl-C, a hang or a broken pipe: the child's answer would come for the
            # next request. A new child is cheap; a confused protocol is not.
            stderr = self._stderr()
            died = _how_it_ended(proc) if not isinstance(e, TimeoutError) else ""
            self._stop()
            if isinstance(e, TimeoutError):
                raise Failed(str(e), stderr, died=str(e)) from None
            if isinstance(e, (BrokenPipeError, EOFError)):
                raise Failed("the compiler ended", stderr, died=died) from None
            raise
        return json.loads(line), self._stderr()

    @staticmethod
    def _read_line(proc: subprocess.Popen) -> bytes:
        deadline = time.monotonic() + COMPILE_SECONDS
        fd = proc.stdout.fileno()
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the compiler did not finish within {COMPILE_SECONDS:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                return b"".join(chunks)

    def _stderr(self) -> str:
        if self._err is None:
            return ""
        size = os.fstat(self._err.fileno()).st_size
        return os.pread(self._err.fileno(), size, 0).decode("utf-8", "replace")


def _how_it_ended(proc: subprocess.Popen) -> str:
    try:
        code = proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return "it stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return f"it was killed ({name}: the kernel's out-of-memory killer, or a limit)"
        return f"it was ended by signal {name}"
    return f"it exited with status {code}"


_compiler = Compiler()


def compiler() -> Compiler:
    """The process's one compile child."""
    return _compiler


def compiled(text: str, cflags: list[str], cache: bool = True) -> bytecode.Bytecode:
    """``text`` compiled: from the cache of compiled programs, else by the compile
    process (and then kept). ``cache=False`` neither reads nor writes it. Failed
    when it does not compile."""
    from . import progcache

    name = progcache.key(text, cflags) if cache else ""
    code = progcache.get(name) if cache else None
    if code is None:
        code = _compiler.compile(text, cflags)
        if cache:
            progcache.put(name, code)
    return code


# ---------------------------------------------------------------- the child's side


def _die_with_parent(parent: int) -> None:
    """Linux ends us when the notebook's process ends, however it ends."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the request took effect
        os._exit(0)


def _limit_memory() -> None:
    import resource

    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    limit = max(int(total * MEMORY_SHARE), 2 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve(parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the notebook; it kills us
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the compiler prints on stdout joins its stderr
    _limit_memory()
    from ._bcc import bcc as load_bcc

    bcc = load_bcc()

    class BPF(bcc.BPF):
        def _trace_autoload(self):
            pass  # compile only: attaching by function name is the notebook's to do

    replies.write(b'{"ready": true}\n')
    replies.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        reply: dict = {"ok": False}
        try:
            b = BPF(text=request["text"], cflags=request["cflags"])
        except Exception as e:  # noqa: BLE001 - BCC raises plain Exception
            reply["error"] = str(e)
        else:
            try:
                if request.get("verify"):
                    fn, prog_type = request["verify"]
                    with contextlib.suppress(Exception):
                        b.load_func(fn.encode(), prog_type)
                    reply = {"ok": True}
                else:
                    reply = {"ok": True, "bytecode": bytecode.extract(bcc, b).to_json()}
            except Exception as e:  # noqa: BLE001
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            finally:
                b.cleanup()
        sys.stderr.flush()
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
