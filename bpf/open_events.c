/*
 * open_events.c - lesson 02: who opened which file, read with BPF helpers and
 * the function's arguments, sent to user space as one C struct per call.
 *
 * Attaches: a kprobe on do_sys_openat2 (the kernel function behind open,
 *           openat and openat2) -> on_open(); or, where the kernel has no
 *           kprobes, the syscalls:sys_enter_openat tracepoint -> on_open_tp().
 * Usage:    %bpf --file bpf/open_events.c -k do_sys_openat2=on_open \
 *               --fallback syscalls:sys_enter_openat=on_open_tp \
 *               --comm cat --run "cat /etc/hostname"
 *           (ebpfkit prints a `note:` when it takes the fallback.)
 * Sends:    struct open_event through the ring buffer `events`; ebpfkit turns
 *           each record into a DataFrame row, one column per field, and `ts`
 *           (bpf_ktime_get_ns, nanoseconds since boot) into wall-clock time.
 * Caveats:  - bpf_get_current_pid_tgid() returns the process id (the kernel's
 *             tgid, what `ps` calls PID) in its upper 32 bits and the thread
 *             id (the kernel's pid, what `ps -L` calls LWP/TID) in the lower.
 *           - dfd is an int: AT_FDCWD (-100) means "relative to the current
 *             directory". The tracepoint stores every syscall argument in an
 *             8-byte unsigned field and a register holds 64 bits, so both
 *             paths cast to (int) or -100 would show as 4294967196.
 *           - filename points into the process's memory: copy it with
 *             bpf_probe_read_user_str(); a BPF program may not dereference it.
 *           - the kprobe also sees open() and openat2(); the tracepoint only
 *             openat() (what glibc's open() uses).
 */
struct open_event {
    u64 ts;             /* bpf_ktime_get_ns(): when, in ns since boot */
    u32 pid;            /* process: upper half of bpf_get_current_pid_tgid() */
    u32 tid;            /* thread: lower half */
    int dfd;            /* directory fd the name is relative to; -100 = AT_FDCWD */
    char comm[16];      /* bpf_get_current_comm(): the thread's name */
    char filename[128]; /* copied from user memory */
};

BPF_RINGBUF_OUTPUT(events, 64);

static int submit(int dfd, const char __user *filename) {
    struct open_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return 0;       /* buffer full: ebpfkit counts it as lost */
    u64 id = bpf_get_current_pid_tgid();
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->dfd = dfd;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    bpf_probe_read_user_str(&e->filename, sizeof(e->filename), filename);
    events.ringbuf_submit(e, 0);
    return 0;
}

/* kprobe: do_sys_openat2(int dfd, const char __user *filename, struct open_how *how) */
int on_open(struct pt_regs *ctx) {
    return submit((int)PT_REGS_PARM1(ctx), (const char __user *)PT_REGS_PARM2(ctx));
}

/* tracepoint: the same call seen at the openat syscall's entry */
int on_open_tp(struct tracepoint__syscalls__sys_enter_openat *args) {
    return submit((int)args->dfd, args->filename);
}
