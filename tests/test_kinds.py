"""The registry of probe kinds (``ebpfkit.kinds``): every place that names kinds reads it.

The %%bpf magic's options, Session's keyword arguments, the spec parser's error
texts and the hints of a cell that attaches nothing all come from ``KINDS``, and
every kind has what a new one must bring: an example that parses, a help line, and
a name check that answers a misspelt name with "did you mean".
"""

from __future__ import annotations

import inspect

import pytest
from helpers import KPROBES, needs_root

from ebpfkit import attach, kinds
from ebpfkit.errors import BadArguments, FeatureMissing, NothingAttached, ProbeNotFound
from ebpfkit.kinds import KINDS
from ebpfkit.session import Session, check_something_attaches


def _magic_parser():
    from ebpfkit.magics import BpfMagics

    return BpfMagics.bpf.parser


# --- what comes from the registry -----------------------------------------------------------


def test_the_magics_probe_options_are_the_registrys():
    actions = {a.dest: a for a in _magic_parser()._actions}
    for kind in KINDS.values():
        action = actions[kind.name]
        assert action.option_strings == kind.option_strings
        assert kind.option_strings[-1] == kind.option  # a short letter only where one is free
        assert action.metavar == kind.metavar and action.help == kind.help
        args = _magic_parser().parse_args([kind.option_strings[0], kind.example])
        assert getattr(args, kind.name) == [kind.example]
    # in the registry's order, as `%%bpf?` lists them
    order = [a.dest for a in _magic_parser()._actions if a.dest in KINDS]
    assert order == list(KINDS)


def test_sessions_keyword_arguments_are_the_registrys():
    params = inspect.signature(Session).parameters
    for name in KINDS:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    s = Session("int f(void *ctx) { return 0; }", **{k.name: k.example for k in KINDS.values()})
    assert [(spec.kind, spec.target) for spec in s.specs] == [
        (k.name, k.example) for k in KINDS.values()
    ]
    with pytest.raises(TypeError, match="'tracepiont'; did you mean tracepoint"):
        Session("", tracepiont="sched:sched_switch")


def test_every_kind_has_an_example_that_parses_and_what_a_kind_needs():
    letters = [k.letter for k in KINDS.values() if k.letter]
    assert len(set(letters)) == len(letters)
    for kind in KINDS.values():
        spec = kinds.parse(kind.name, f"{kind.example}=fn")
        assert (spec.kind, spec.target, spec.fn) == (kind.name, kind.example, "fn")
        assert kind.help and kind.metavar and kind.noun and kind.form
        assert kind.program_type in ("KPROBE", "TRACEPOINT", "PERF_EVENT")
        assert callable(kind.check) and callable(kind.attach)


def test_the_parsers_error_texts_come_from_the_registry():
    for kind in KINDS.values():
        with pytest.raises(BadArguments) as e:
            kinds.parse(kind.name, " =fn")
        assert str(e.value) == f"--{kind.name} needs a target, e.g. {kind.example}"
        if kind.split is not None:
            with pytest.raises(BadArguments) as e:
                kinds.parse(kind.name, "oneword")
            assert str(e.value) == (
                f"--{kind.name} 'oneword': give {kind.form}, e.g. {kind.example}"
            )
    with pytest.raises(BadArguments, match="unknown probe kind 'kprobes'; one of kprobe, "):
        kinds.parse("kprobes", "x")
    # the messages users know, unchanged
    with pytest.raises(
        BadArguments, match=r"^--uprobe 'malloc': give BINARY:SYMBOL, e\.g\. c:malloc$"
    ):
        attach.parse("uprobe", "malloc")
    with pytest.raises(BadArguments, match="give CATEGORY:EVENT, e.g. syscalls:sys_enter_openat"):
        attach.parse("tracepoint", "sched_switch")
    assert attach.parse("tracepoint", "sched/sched_switch").target == "sched/sched_switch"


def test_a_cell_that_attaches_nothing_is_pointed_to_the_registrys_options():
    with pytest.raises(NothingAttached) as e:
        check_something_attaches([], "int a(void *ctx) { return 0; }")
    text = str(e.value)
    for name in kinds.SUGGESTED:
        kind = KINDS[name]
        assert f"{kind.short} {kind.form}=a for a {kind.noun}" in text
    assert "-t CATEGORY:EVENT=a for a tracepoint, -u BINARY:SYMBOL=a for a uprobe, " in text
    assert "-P cpu-clock:99=a for a perf event, -k FUNCTION=a for a kprobe)" in text


# --- did you mean, for every kind -----------------------------------------------------------


# Each kind's example misspelt, and the name "did you mean" must offer first.
MISSPELT = {
    "kprobe": ("do_sys_opnat2", "do_sys_openat2"),
    "kretprobe": ("do_sys_opnat2", "do_sys_openat2"),
    "tracepoint": ("syscalls:sys_enter_opnat", "syscalls:sys_enter_openat"),
    "uprobe": ("c:mallc", "malloc"),
    "uretprobe": ("c:mallc", "malloc"),
    "perf": ("cpu-clok:99", "cpu-clock"),
    # by path: `python3` on PATH may be a shim script (pyenv), not the ELF file
    "usdt": ("/usr/bin/python3.11:function_entry", "/usr/bin/python3.11:python:function__entry"),
}


def test_every_kind_has_a_misspelling_listed_here():
    assert set(MISSPELT) == set(KINDS)


@needs_root  # tracefs is root's
@pytest.mark.parametrize("name", list(KINDS))
def test_every_kinds_name_check_says_did_you_mean(name):
    kind = KINDS[name]
    wrong, expected = MISSPELT[name]
    if kind.available is not None and not KPROBES:
        # no kprobes here: the check says why, and names the tracepoint that stands in
        with pytest.raises(FeatureMissing, match="this kernel has no kprobes"):
            kind.check(kind.example)
        check = kind.check_name
    else:
        check = kind.check
    with pytest.raises(ProbeNotFound) as e:
        check(wrong)
    assert f"did you mean: {expected}" in str(e.value)


@needs_root
def test_the_kprobe_fallback_is_decided_in_the_registry():
    kprobe = kinds.parse("kprobe", "do_sys_openat2=f")
    fallback = [kinds.parse("tracepoint", "syscalls:sys_enter_openat=g")]
    specs, note = kinds.fall_back([kprobe], fallback)
    if KPROBES:
        assert (specs, note) == ([kprobe], "")
    else:
        assert specs == fallback
        assert note.startswith("this kernel has no kprobes (")
        assert note.endswith(
            "Instead of kprobe do_sys_openat2 -> f(), ebpfkit attaches "
            "tracepoint syscalls:sys_enter_openat -> g(), which sees the same calls."
        )
        assert kinds.stand_in("kprobe", "do_sys_openat2") == "syscalls:sys_enter_openat"
        assert kinds.stand_in("kretprobe", "__x64_sys_getppid") == "syscalls:sys_exit_getppid"
        with pytest.raises(ProbeNotFound, match="did you mean: do_sys_openat2"):
            kinds.fall_back([kinds.parse("kprobe", "do_sys_opnat2")], fallback)
    assert kinds.fall_back([kprobe], []) == ([kprobe], "")
    assert kinds.stand_in("tracepoint", "sched:sched_switch") is None
