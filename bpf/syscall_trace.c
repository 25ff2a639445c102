/*
 * syscall_trace.c - an strace-like tracer: one event per system call, with its
 * number, its first three arguments, its return value and how long it took,
 * from the raw_syscalls:sys_enter and raw_syscalls:sys_exit tracepoints
 * (they fire for every system call, on kernels with or without kprobes).
 *
 * How: sys_enter stores the entry time and arguments in a hash map keyed by
 * the thread id; sys_exit of the same thread finds them, computes the
 * duration, sends one event through a ring buffer, and adds the call to two
 * maps: `totals` (calls, errors, time per syscall: the strace -c table, exact
 * even when the buffer overflows) and `latency` (a log2 histogram of the
 * durations per syscall). Everything is filtered in the kernel, before
 * anything is stored or sent. Sends: struct syscall_event, one per call.
 *
 * Usage:   %bpf --file bpf/syscall_trace.c --comm ls --run "ls /"
 *          ebpfkit trace --run "ls /" [--syscall write ...] [--summary]
 *          (the command defines the filters below in front of this text)
 *
 * Filters: compile-time constants, as bcc's own tools do (syscount, opensnoop):
 *          user space puts #define lines in front of the program, so the
 *          filter is right from the first event (a map filled after loading
 *          would let events through while it is still empty).
 *   SKIP_TGID N          ignore process N (the tracer itself: its own reads of
 *                        the buffer are system calls too)
 *   FOLLOW_FROM N        trace only the children of process N and their
 *                        descendants (strace -f): sched:sched_process_fork adds
 *                        each new child to the map `traced`
 *   SYSCALL_WANTED(id)   an expression: trace only the syscalls it is true for
 *   FAILED_ONLY          keep only calls that returned an error (ret < 0)
 *   SUMMARY_ONLY         fill the maps, send no events (ebpfkit trace --summary)
 *   --pid / --comm       ebpfkit's own filters, injected at the top of each
 *                        probe (the process, by tgid, or by command name)
 *
 * Caveats: a call that began before the trace started (a blocked read) has no
 *          entry: its event says seen = 2, duration 0, arguments 0. A call
 *          whose exit came in the instant between attaching sys_enter and
 *          sys_exit is not reported at all.
 *          exit and exit_group never return: sched:sched_process_exit sends
 *          them with seen = 1 (strace prints "= ?"); so does a thread killed
 *          inside a call. syscount-bpfcc counts at the exit, so not those.
 *          Arguments are raw numbers (pointers are not read).
 *          Syscall numbers are per architecture (x86_64: write 1, getppid 110).
 */
struct start_t {
    u64 ts;
    s64 id;
    u64 args[3];
};

struct syscall_event {
    u64 ts;        /* bpf_ktime_get_ns() at entry (at exit when seen = 2) */
    u64 dur_ns;    /* exit - entry, in ns; 0 unless seen = 3 */
    u32 pid;       /* process (tgid) */
    u32 tid;       /* thread */
    s64 id;        /* syscall number */
    s64 ret;       /* return value; -errno on failure; 0 when seen = 1 */
    u64 arg0;
    u64 arg1;
    u64 arg2;
    u32 seen;      /* 3: entry and exit; 2: exit only (the call began before
                      the trace); 1: entry only (the thread ended in the call:
                      exit, exit_group, or killed while blocked) */
    char comm[16];
};

struct total_t {
    u64 calls;     /* every call, whatever was seen of it */
    u64 errors;    /* returned -errno */
    u64 timed;     /* calls with entry and exit: those in total_ns */
    u64 total_ns;
};

struct hist_key {
    u64 id;        /* syscall number (u64: no padding before slot) */
    u64 slot;      /* log2 of the duration in ns */
};

BPF_HASH(start, u32, struct start_t, 10240);
BPF_HASH(totals, u64, struct total_t, 1024);
BPF_HISTOGRAM(latency, struct hist_key, 4096);
BPF_RINGBUF_OUTPUT(events, 256);

#ifdef FOLLOW_FROM
BPF_HASH(traced, u32, u8, 10240);

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    u32 child = args->child_pid;
    u8 one = 1;
    if (parent == FOLLOW_FROM || traced.lookup(&parent))
        traced.update(&child, &one);
    return 0;
}
#endif

static inline int process_wanted(u64 pid_tgid) {
    u32 tgid = pid_tgid >> 32;
#ifdef SKIP_TGID
    if (tgid == SKIP_TGID)
        return 0;
#endif
#ifdef FOLLOW_FROM
    if (!traced.lookup(&tgid))
        return 0;
#endif
    return 1;
}

static inline int syscall_wanted(s64 id) {
#ifdef SYSCALL_WANTED
    if (!(SYSCALL_WANTED(id)))
        return 0;
#endif
    return 1;
}

/* One finished (or abandoned) call: add it to the maps, then send it. */
static inline void record(u64 pid_tgid, s64 id, s64 ret, u32 seen, u64 ts, u64 dur_ns,
                          struct start_t *entry) {
    u64 key = id;
    struct total_t zero = {};
    struct total_t *t = totals.lookup_or_try_init(&key, &zero);
    if (t) {
        __sync_fetch_and_add(&t->calls, 1);
        if ((seen & 2) && ret < 0 && ret > -4096)
            __sync_fetch_and_add(&t->errors, 1);
        if (seen == 3) {
            __sync_fetch_and_add(&t->timed, 1);
            __sync_fetch_and_add(&t->total_ns, dur_ns);
        }
    }
    if (seen == 3) {
        struct hist_key hk = {};
        hk.id = id;
        hk.slot = bpf_log2l(dur_ns);
        latency.increment(hk);
    }
#ifndef SUMMARY_ONLY
    struct syscall_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return;
    e->ts = ts;
    e->dur_ns = dur_ns;
    e->pid = pid_tgid >> 32;
    e->tid = (u32)pid_tgid;
    e->id = id;
    e->ret = ret;
    e->arg0 = entry->args[0];
    e->arg1 = entry->args[1];
    e->arg2 = entry->args[2];
    e->seen = seen;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    events.ringbuf_submit(e, 0);
#endif
}

TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!process_wanted(pid_tgid) || !syscall_wanted(args->id))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct start_t s = {};
    s.ts = bpf_ktime_get_ns();
    s.id = args->id;
    s.args[0] = args->args[0];
    s.args[1] = args->args[1];
    s.args[2] = args->args[2];
    start.update(&tid, &s);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit) {
    u64 now = bpf_ktime_get_ns();
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!process_wanted(pid_tgid))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct start_t entry = {}, zero_entry = {};
    struct start_t *s = start.lookup(&tid);
    int paired = 0;
    if (s) {
        entry = *s;
        start.delete(&tid);
        /* The same call, or rt_sigreturn, whose exit says -1 (it restores the
         * registers). Any other number: this entry's exit came while sys_exit was
         * not attached yet; that call is dropped, this one has no entry. */
        paired = entry.id == args->id || args->id == -1;
    }
    if (!paired && !syscall_wanted(args->id))
        return 0;
#ifdef FAILED_ONLY
    if (args->ret >= 0)
        return 0;
#endif
    if (paired)
        record(pid_tgid, entry.id, args->ret, 3, entry.ts, now - entry.ts, &entry);
    else
        record(pid_tgid, args->id, args->ret, 2, now, 0, &zero_entry);
    return 0;
}

/* A thread that ends inside a system call (exit, exit_group, a kill) has an entry
 * and no exit: record it as such, and free its slot in `start`. */
TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    struct start_t *s = start.lookup(&tid);
    if (!s)
        return 0;
    struct start_t entry = *s;
    start.delete(&tid);
#ifndef FAILED_ONLY
    record(pid_tgid, entry.id, 0, 1, entry.ts, 0, &entry);
#endif
    return 0;
}
