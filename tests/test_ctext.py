"""ebpfkit.ctext: the C source with comments and literals blanked, positions kept."""

from __future__ import annotations

from ebpfkit import ctext, program

SOURCE = r"""/* a call to bpf_trace_printk() in a comment ( */
int f(void *ctx) {  // and foo( here
    char q = '"', p = '(';
    bpf_trace_printk("x(%d) \" y\n", 1);
    return 0;
}
"""


def test_blank_keeps_positions_and_lines():
    code = ctext.blank(SOURCE)
    assert len(code) == len(SOURCE)
    assert code.count("\n") == SOURCE.count("\n")
    assert "printk" not in code.splitlines()[0]
    assert "foo" not in code
    # The call's name stays, its string's text does not; quotes stay as quotes.
    line = code.splitlines()[3]
    assert line.startswith('    bpf_trace_printk("') and "x(" not in line
    assert code.count("(") == code.count(")")


def test_literals_can_be_kept():
    code = ctext.blank('#include "vmlinux.h" /* x */', literals=False)
    assert code == '#include "vmlinux.h"        '


def test_only_calls_are_rewritten():
    text, tagged = program.count_printk(SOURCE, "T: ")
    assert tagged
    assert text.count("__ebpfkit_printk.lookup") == 1
    assert 'bpf_trace_printk("T: " "x(%d)' in text
    assert text.splitlines()[0] == SOURCE.splitlines()[0]  # the comment is untouched
