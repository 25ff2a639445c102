/*
 * exec_tracepoint.c - one line per execve on the whole machine, through the
 * syscalls:sys_enter_execve tracepoint (works on kernels without kprobes).
 *
 * Usage:   %%bpf --file bpf/exec_tracepoint.c --run "ls; cat /etc/hostname"
 * Sends:   an event per exec: pid, parent-free facts only (helpers and
 *          tracepoint args are exact on every kernel), and the file name.
 */
struct exec_event {
    u64 ts;          /* bpf_ktime_get_ns(): shown as wall-clock time */
    u32 pid;         /* process (tgid) that called execve */
    u32 tid;         /* its thread */
    char comm[16];   /* the name before the exec replaces it */
    char filename[128];
};

BPF_RINGBUF_OUTPUT(events, 64);

TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    struct exec_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    bpf_probe_read_user_str(&e->filename, sizeof(e->filename), args->filename);
    events.ringbuf_submit(e, 0);
    return 0;
}
