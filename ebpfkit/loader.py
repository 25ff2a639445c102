"""Load a compiled program (bytecode.Bytecode) into the kernel, without clang.

``load(bcc, code)`` gives an object of BCC's own ``BPF`` class whose maps were
created here and whose functions load from the bytecode: BCC's attach methods,
tables, perf and ring buffers and ``cleanup`` work on it unchanged, since they
all go through ``load_func``, ``get_table`` and file descriptors. Only what
needs BCC's compiled module is answered from the bytecode instead.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import resource

from . import bytecode as bc
from .bpfsys import MAP_CREATE, PROG_LOAD, BpfError, address, bpf

# Programs that attach to a kernel function's BTF id, by their bcc name prefix:
# (expected attach type: BPF_TRACE_FENTRY, BPF_TRACE_FEXIT, BPF_LSM_MAC; BTF name prefix).
_BTF_TARGETS = {"kfunc__": (24, ""), "kretfunc__": (25, ""), "lsm__": (27, "bpf_lsm_")}
_LOG_BYTES = 1 << 24


class _MapCreate(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    ]


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
    ]


class MapRefusedByKernel(Exception):
    """The kernel would not create map ``name``: ``errno`` and its words in ``why``."""

    def __init__(self, name: str, err: int):
        super().__init__(f"could not open bpf map: {name}, error: {errno.errorcode.get(err, err)}")
        self.name, self.errno = name, err


class LoadRefused(Exception):
    """The kernel refused a program; ``log`` is the verifier's. The text begins as
    BCC's own does, which the callers' explanations already recognise."""

    def __init__(self, name: str, prog_type: int, err: int, log: str):
        import os

        super().__init__(f"Failed to load BPF program {name}: {os.strerror(err)}")
        self.name, self.prog_type, self.errno, self.log = name, prog_type, err, log


def _create_map(m: bc.MapDef) -> int:
    attr = _MapCreate(
        map_type=m.type,
        key_size=m.key_size,
        value_size=m.value_size,
        max_entries=m.max_entries,
        map_flags=m.flags,
        map_name=m.name.encode()[:15],
    )
    try:
        return bpf(MAP_CREATE, attr)
    except BpfError as e:
        if e.errno != errno.EPERM or not _raise_memlock():
            raise MapRefusedByKernel(m.name, e.errno) from None
    try:  # kernels before 5.11 charge maps to RLIMIT_MEMLOCK, as BCC knows
        return bpf(MAP_CREATE, attr)
    except BpfError as e:
        raise MapRefusedByKernel(m.name, e.errno) from None


def _raise_memlock() -> bool:
    try:
        limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        if limit[0] == resource.RLIM_INFINITY:
            return False
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,) * 2)
        return True
    except (ValueError, OSError):
        return False


def load_program(
    name: str,
    insns: bytes,
    prog_type: int,
    license: str,
    kern_version: int,
    attach: tuple[int, int] = (0, 0),
) -> int:
    """A program's descriptor; LoadRefused with the verifier's log when it says no.
    ``attach``: (expected attach type, BTF id of the kernel function) for fentry and LSM."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _ProgLoad(
        prog_type=prog_type,
        insn_cnt=len(insns) // 8,
        insns=address(code),
        license=address(lic),
        kern_version=kern_version,
        prog_name=name.encode()[:15],
        expected_attach_type=attach[0],
        attach_btf_id=attach[1],
    )
    try:
        return bpf(PROG_LOAD, attr)
    except BpfError as e:
        if e.errno == errno.EPERM and _raise_memlock():
            return load_program(name, insns, prog_type, license, kern_version, attach)
        first = e.errno
    # Again with the log: the first try keeps the common case fast.
    log = ctypes.create_string_buffer(_LOG_BYTES)
    attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_BYTES, address(log)
    try:
        fd = bpf(PROG_LOAD, attr)
    except BpfError as e:
        text = log.value.decode("utf-8", "replace")
        raise LoadRefused(name, prog_type, e.errno or first, text) from None
    return fd  # refused once, accepted with a log: take it


def _btf_target(name: str) -> tuple[int, int]:
    """(expected attach type, BTF id) of an fentry/fexit/LSM function named the bcc way."""
    from .btf import Btf
    from .errors import ProbeNotFound

    for prefix, (attach_type, btf_prefix) in _BTF_TARGETS.items():
        if name.startswith(prefix):
            target = btf_prefix + name[len(prefix) :]
            try:
                tid = Btf.load().func_id(target)
            except (OSError, ValueError) as e:
                raise ProbeNotFound(f"{name}: the kernel's BTF cannot be read ({e})") from None
            if tid is None:
                raise ProbeNotFound(f"{name}: the kernel's BTF has no function {target}")
            return attach_type, tid
    raise ProbeNotFound(f"{name}: fentry and LSM functions are named kfunc__, kretfunc__, lsm__")


def _table_classes(table) -> dict[int, type]:
    return {
        table.BPF_MAP_TYPE_HASH: table.HashTable,
        table.BPF_MAP_TYPE_ARRAY: table.Array,
        table.BPF_MAP_TYPE_PROG_ARRAY: table.ProgArray,
        table.BPF_MAP_TYPE_PERF_EVENT_ARRAY: table.PerfEventArray,
        table.BPF_MAP_TYPE_PERCPU_HASH: table.PerCpuHash,
        table.BPF_MAP_TYPE_PERCPU_ARRAY: table.PerCpuArray,
        table.BPF_MAP_TYPE_LPM_TRIE: table.LpmTrie,
        table.BPF_MAP_TYPE_STACK_TRACE: table.StackTrace,
        table.BPF_MAP_TYPE_LRU_HASH: table.LruHash,
        table.BPF_MAP_TYPE_LRU_PERCPU_HASH: table.LruPerCpuHash,
        table.BPF_MAP_TYPE_CGROUP_ARRAY: table.CgroupArray,
        table.BPF_MAP_TYPE_RINGBUF: table.RingBuf,
    }


def bpf_class(bcc):
    """BCC's BPF class, made to load from bytecode (built once, on first use)."""
    cls = getattr(bcc, "_ebpfkit_loaded", None)
    if cls is None:
        cls = bcc._ebpfkit_loaded = _make_class(bcc)
    return cls


def load(bcc, code: bc.Bytecode):
    """The program ``code`` with its maps created; nothing loaded or attached yet."""
    return bpf_class(bcc)(code)


# long: one class: the methods of BCC's BPF that need its compiled module, replaced.
def _make_class(bcc):
    BPF = bcc.BPF
    classes = _table_classes(bcc.table)

    class LoadedBPF(BPF):
        def __init__(self, code: bc.Bytecode):
            # What BPF.__init__ sets up, less the compile (bcc/__init__.py).
            self.kprobe_fds, self.uprobe_fds, self.tracepoint_fds = {}, {}, {}
            self.raw_tracepoint_fds, self.kfunc_entry_fds, self.kfunc_exit_fds = {}, {}, {}
            self.lsm_fds, self.perf_buffers, self.open_perf_events = {}, {}, {}
            self._ringbuf_manager = None
            self.tracefile = None
            self.debug = 0
            self.funcs, self.tables = {}, {}
            self.module = None
            self.code = code
            self.map_fds: list[int] = []
            try:
                for m in code.maps:
                    self.map_fds.append(_create_map(m))
            except BaseException:
                self.close()
                raise
            atexit.register(self.cleanup)

        # ---- functions

        def load_func(self, func_name, prog_type, device=None, attach_type=-1):
            name = func_name.decode() if isinstance(func_name, bytes) else func_name
            key = name.encode()
            if key in self.funcs:
                return self.funcs[key]
            function = self.code.function(name)
            if function is None:
                raise Exception(f"Unknown program {name}")
            attach = _btf_target(name) if prog_type in (BPF.TRACING, BPF.LSM) else (0, 0)
            fd = load_program(
                name,
                bc.patched(function, self.map_fds),
                prog_type,
                self.code.license,
                self.code.kern_version,
                attach,
            )
            fn = BPF.Function(self, key, fd)
            self.funcs[key] = fn
            return fn

        def function_names(self) -> list[str]:
            return [f.name for f in self.code.functions]

        def _trace_autoload(self):
            """Attach the functions named the bcc way, as BPF._trace_autoload does."""
            for name in self.function_names():
                raw = name.encode()
                if name.startswith("kprobe__"):
                    self.load_func(raw, BPF.KPROBE)
                    self.attach_kprobe(event=self.fix_syscall_fnname(raw[8:]), fn_name=raw)
                elif name.startswith("kretprobe__"):
                    self.load_func(raw, BPF.KPROBE)
                    self.attach_kretprobe(event=self.fix_syscall_fnname(raw[11:]), fn_name=raw)
                elif name.startswith("tracepoint__"):
                    self.load_func(raw, BPF.TRACEPOINT)
                    tp = raw[len(b"tracepoint__") :].replace(b"__", b":")
                    self.attach_tracepoint(tp=tp, fn_name=raw)
                elif name.startswith("raw_tracepoint__"):
                    self.load_func(raw, BPF.RAW_TRACEPOINT)
                    self.attach_raw_tracepoint(tp=raw[len(b"raw_tracepoint__") :], fn_name=raw)
                elif name.startswith("kfunc__"):
                    self.attach_kfunc(fn_name=raw)
                elif name.startswith("kretfunc__"):
                    self.attach_kretfunc(fn_name=raw)
                elif name.startswith("lsm__"):
                    self.attach_lsm(fn_name=raw)

        # ---- maps

        def table_types(self) -> list[tuple[str, int]]:
            return [(m.name, m.type) for m in self.code.maps]

        def perf_event_fields(self, name: str) -> list[tuple[str, str]]:
            return [
                (f.partition("#")[0], f.partition("#")[2])
                for f in self.code.event_fields.get(name, [])
            ]

        def get_table(self, name, keytype=None, leaftype=None, reducer=None):
            name = name.decode() if isinstance(name, bytes) else name
            i = self.code.map_index(name)
            if i is None:
                raise KeyError(name)
            m = self.code.maps[i]
            cls = classes.get(m.type)
            if cls is None:
                raise Exception(f"map {name}: type {m.type} is not read by ebpfkit")
            keytype = keytype or BPF._decode_table_type(json.loads(m.key_desc))
            leaftype = leaftype or BPF._decode_table_type(json.loads(m.leaf_desc))
            args = (self, i, self.map_fds[i], keytype, leaftype)
            if cls in (bcc.table.PerfEventArray, bcc.table.RingBuf):
                t = cls(*args, name.encode())
            elif cls in (bcc.table.PerCpuHash, bcc.table.PerCpuArray):
                t = cls(*args, reducer=reducer)
            else:
                t = cls(*args)
            # Asked of BCC's module in the constructor: ours has none.
            t.ttype, t.flags, t.max_entries = m.type, m.flags, m.max_entries
            return t

        def close(self):
            super().close()
            fds, self.map_fds = self.map_fds, []
            for fd in fds:
                import os

                os.close(fd)

    return LoadedBPF
