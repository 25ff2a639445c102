/*
 * malloc_count.c - calls of a user-space function per process (uprobe), and
 * for malloc() the size asked for and the address returned (uretprobe).
 *
 * Traces:  libc's malloc: a uprobe at its entry (on_entry) and a uretprobe at
 *          its return (on_return).
 * Usage:   %bpf --file bpf/malloc_count.c -u c:malloc=on_entry -U c:malloc=on_return
 *              --comm malloc-demo --run "/usr/bin/python3 /tmp/malloc_demo.py 100"
 *          (lesson 05 writes that workload, which renames itself malloc-demo)
 *          ebpfkit uprobe c malloc -d 2     (the entry half alone, for any function)
 * Gives:   maps `calls` (PID, comm -> calls) and `sizes` (log2 histogram of the
 *          first argument: malloc's size); events `allocs`, one record per
 *          returned call: {ts, pid, tid, size, addr, comm}.
 * Caveats: a uprobe traps into the kernel on every call, in every process that
 *          maps the library (about a microsecond each): trace a short while, or
 *          one process (--pid, which attaches to that process only). Without
 *          --pid or --comm every process's mallocs are streamed. The entry saves
 *          the size per thread until the return: a function that never returns
 *          (longjmp) leaves an entry in `pending`. on_entry reads only the first
 *          argument register, so it works on any function; only for malloc is
 *          that argument a size. GNU IFUNC symbols (strlen, memcpy: type `i` in
 *          `nm -D`) cannot be probed by name: the probe lands in the resolver.
 */
struct key_t {
    u32 pid;
    char comm[16];
};

struct alloc_t {
    u64 ts;        /* bpf_ktime_get_ns() at the return */
    u32 pid;
    u32 tid;
    u64 size;      /* malloc's argument, saved at the entry */
    u64 addr;      /* malloc's return value: PT_REGS_RC */
    char comm[16];
};

BPF_HASH(calls, struct key_t, u64, 10240);
BPF_HISTOGRAM(sizes);                      /* log2(size) -> calls */
BPF_HASH(pending, u32, u64, 10240);        /* thread -> size, from entry to return */
BPF_RINGBUF_OUTPUT(allocs, 256);

int on_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct key_t key = {.pid = id >> 32};
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    calls.atomic_increment(key);

    u64 size = PT_REGS_PARM1(ctx);
    sizes.atomic_increment(bpf_log2l(size));
    u32 tid = (u32)id;
    pending.update(&tid, &size);
    return 0;
}

int on_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u64 *size = pending.lookup(&tid);
    if (!size)
        return 0;  /* the entry was not seen (attached mid-call) */
    struct alloc_t *e = allocs.ringbuf_reserve(sizeof(*e));
    if (e) {
        e->ts = bpf_ktime_get_ns();
        e->pid = id >> 32;
        e->tid = tid;
        e->size = *size;
        e->addr = PT_REGS_RC(ctx);
        bpf_get_current_comm(&e->comm, sizeof(e->comm));
        allocs.ringbuf_submit(e, 0);
    }
    pending.delete(&tid);
    return 0;
}
