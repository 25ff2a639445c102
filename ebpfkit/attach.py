"""Attaching specs: which function of the cell goes where, and attaching it with clear errors.

What each probe kind is (its options, target, checks, attach call) lives in
``ebpfkit.kinds``; this module is what all kinds share: a spec's function taken
from the cell, the names bcc attaches by itself checked first, and bcc's failures
turned into ebpfkit's errors.
"""

from __future__ import annotations

import re

from . import ctext
from ._stderr import capture_stderr
from .errors import AttachError, BadArguments, EbpfkitError
from .kinds import KINDS, Spec, parse
from .program import AUTO_PREFIXES, verifier_error

__all__ = ["Spec", "assign_functions", "attach", "candidate_functions", "parse", "precheck"]

# A definition starts a line or follows a `;` or `}` (one-line cells are common in tests).
_DEF = re.compile(r"(?:^|(?<=[;}]))[ \t]*(?:int|u32|u64|long)\s+(\w+)\s*\([^;{}]*\)\s*\{", re.M)


def candidate_functions(text: str) -> list[str]:
    """Non-static functions of the cell that bcc does not attach by name."""
    return [n for n in _DEF.findall(text) if not n.startswith(AUTO_PREFIXES)]


def assign_functions(specs: list[Spec], text: str) -> list[Spec]:
    """Fill in ``fn`` where a spec left it out: the cell's only probe function."""
    candidates = candidate_functions(text)
    for spec in specs:
        if spec.fn:
            if spec.fn not in candidates and not re.search(rf"\b{re.escape(spec.fn)}\s*\(", text):
                raise BadArguments(
                    f"{spec}: the cell has no function {spec.fn!r}"
                    + (f"; its functions: {', '.join(candidates)}" if candidates else "")
                )
            continue
        if len(candidates) == 1:
            spec.fn = candidates[0]
        elif not candidates:
            raise BadArguments(f"{spec.kind} {spec.target}: the cell defines no function to attach")
        else:
            raise BadArguments(
                f"{spec.kind} {spec.target}: the cell has several functions "
                f"({', '.join(candidates)}); say which, e.g. "
                f"--{spec.kind} '{spec.target}={candidates[0]}'"
            )
    check_usdt_readers(specs, text)
    return specs


_ANY_FUNCTION = re.compile(r"\b(\w+)\s*\((?:[^;{}()]|\([^()]*\))*\)\s*\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof"}
_USDT_READ = re.compile(r"\bbpf_usdt_readarg(?:_p)?\s*\(")


def usdt_readers(text: str) -> list[str]:
    """The functions of the cell whose own bodies call bpf_usdt_readarg(_p)."""
    code = ctext.blank(text)
    found = []
    for m in _ANY_FUNCTION.finditer(code):
        if m[1] in _NOT_FUNCTIONS:
            continue
        depth, end = 0, m.end() - 1
        for end in range(m.end() - 1, len(code)):
            depth += {"{": 1, "}": -1}.get(code[end], 0)
            if depth == 0:
                break
        if _USDT_READ.search(code, m.end(), end) and m[1] not in found:
            found.append(m[1])
    return found


def check_usdt_readers(specs: list[Spec], text: str) -> None:
    """bpf_usdt_readarg only where BCC will find its readers: in a function given to --usdt.

    BCC rewrites the call into one of the readers made for the USDT probe the calling
    function is attached to; anywhere else the call compiles into a program the verifier
    refuses with words about its last instruction.
    """
    attached = {s.fn for s in specs if s.kind == "usdt"}
    for name in usdt_readers(text):
        if name in attached:
            continue
        given = [str(s) for s in specs if s.fn == name]
        helper = re.search(rf"\bstatic\b[^;{{}}]*\b{name}\s*\(", ctext.blank(text))
        if not given and not helper and not name.startswith(AUTO_PREFIXES):
            continue  # never loaded: a probe function of the cell this trace does not attach
        where = f"is attached as {given[0]}" if given else "is attached by its name, not by --usdt"
        raise BadArguments(
            f"{name}() reads a USDT probe's arguments (bpf_usdt_readarg) but {where}: BCC "
            "makes the argument readers for the function a --usdt option attaches "
            f"(--usdt BINARY:PROBE={name}), and the call must be in that function itself, "
            "not in a helper it calls"
        )


def precheck_auto(text: str) -> None:
    """Before compiling: bcc attaches kprobe__/kretprobe__ functions while it loads them."""
    for kind in KINDS.values():
        if kind.by_name:
            for name in re.findall(rf"\b{kind.by_name}(\w+)\s*\(", text):
                kind.check(name)
    for category, event in re.findall(r"TRACEPOINT_PROBE\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)", text):
        KINDS["tracepoint"].check(f"{category}:{event}")


def precheck(spec: Spec) -> None:
    """Name problems before anything is loaded: unknown names, missing kernel features."""
    KINDS[spec.kind].check(spec.target)


def attach(bcc, bpf, spec: Spec, pid: int | None = None) -> None:
    """Attach one spec; every failure becomes an ebpfkit error naming what went wrong."""
    kind = KINDS[spec.kind]
    kind.check(spec.target)
    try:
        with capture_stderr() as err:
            kind.attach(bcc, bpf, spec, pid)
    except EbpfkitError:
        raise
    except Exception as e:  # noqa: BLE001 - bcc raises plain Exception
        if "Failed to load" in str(e):
            # attach loads the function first: the verifier said no.
            raise verifier_error(bpf, e, err.text) from None
        detail = err.text.strip().splitlines()[-1] if err.text.strip() else ""
        explained = kind.explain(spec.target, detail or str(e)) if kind.explain else None
        if explained is not None:
            raise explained from None
        raise AttachError(
            f"could not attach {spec}: {e}" + (f" ({detail})" if detail else "")
        ) from None
