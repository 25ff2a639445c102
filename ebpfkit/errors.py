"""The errors a user sees: one clear message, no Python traceback.

Every error derives from IPython's ``UsageError`` when IPython is present, so a
notebook shows just the message; from the command line they are ordinary
exceptions whose text is printed alone.
"""

from __future__ import annotations

try:  # IPython is optional for the plain Python API and the command line.
    from IPython.core.error import UsageError as _Base
except ImportError:  # pragma: no cover - exercised only without IPython
    _Base = Exception


class EbpfkitError(_Base):
    """Base of every error ebpfkit raises on purpose."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows a bare message only for UsageError itself, not its subclasses;
        # this hook makes a notebook show ours as one message too, with no stack.
        return [f"{type(self).__name__}: {self}"]


class BccMissing(EbpfkitError):
    """BCC's Python module (from the distribution) cannot be imported."""


class NotPermitted(EbpfkitError):
    """The process lacks the rights eBPF needs (root, CAP_BPF, CAP_PERFMON)."""


class CompileError(EbpfkitError):
    """clang rejected the program; the message quotes the user's own lines."""


class VerifierError(EbpfkitError):
    """The kernel's verifier rejected a program."""


class ProbeNotFound(EbpfkitError):
    """A kernel function, tracepoint, binary or symbol that does not exist."""


class FeatureMissing(EbpfkitError):
    """The running kernel lacks a feature (kprobes, hardware perf events, ...)."""


class AttachError(EbpfkitError):
    """Attaching a probe failed for another reason."""


class BadArguments(EbpfkitError):
    """The magic's line or the API call was given options that do not fit."""


class RecordingError(EbpfkitError):
    """A recording that is missing, damaged, of another format, or too new to replay."""


class NothingAttached(EbpfkitError):
    """A cell whose functions no option attaches and none is named the bcc way."""


class MapRefused(EbpfkitError):
    """The kernel refused to create one of the program's maps (too large, no memory, ...)."""
