"""C source as the compiler reads it: comments and the insides of literals blanked.

ebpfkit rewrites and searches the user's C with regular expressions (wrapping buffer writes
and bpf_trace_printk calls, finding probe functions and struct names). A name in a comment
("through bpf_trace_printk().") or in a string ("(%s)") is not code, and a parenthesis in a
string does not close a call. ``blank`` keeps every character's position and every newline,
so a match in the blanked text is at the same place, and on the same line, in the original.
"""

from __future__ import annotations

import re

_COMMENT_OR_LITERAL = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.S
)


def blank(source: str, literals: bool = True) -> str:
    """``source`` with comments turned to spaces and, if ``literals``, the text inside string
    and character literals too (their quotes stay); newlines and positions are kept."""

    def spaces(m: re.Match) -> str:
        text = m.group(0)
        if text[0] in "\"'":
            if not literals:
                return text
            return text[0] + " " * (len(text) - 2) + text[-1]
        return re.sub(r"[^\n]", " ", text)

    return _COMMENT_OR_LITERAL.sub(spaces, source)
