/*
 * sched_switch.c - lesson 06: what tracepoints show, from their own fields.
 *
 * Three programs, each attached by name (nothing attaches by itself, so a tool
 * can load the file and attach only the one it needs):
 *
 *   on_switch   sched:sched_switch, one event per context switch: who left the
 *               CPU (prev_comm, prev_pid, prev_state) and who got it (next_comm,
 *               next_pid), sent through the `switches` ring buffer.
 *   on_enter    syscalls:sys_enter_openat \  the time between a thread's entry
 *   on_exit     syscalls:sys_exit_openat  /  to openat() and its return, as a
 *               log2 histogram of microseconds (`latency_us`); the entry time
 *               waits in `start`, keyed by thread id.
 *   count_hits  any tracepoint: hits per process (what `ebpfkit tracepoint` runs).
 *
 * Usage:   %bpf --file sched_switch.c -t sched:sched_switch=on_switch -d 1
 *          %bpf --file sched_switch.c -t syscalls:sys_enter_openat=on_enter
 *                   -t syscalls:sys_exit_openat=on_exit --comm cat --run "cat /etc/*.conf"
 *          ebpfkit tracepoint sched:sched_switch --run "ls -R /usr/share/doc"
 * Caveats: every field is read from the tracepoint's `args`, whose layout BCC
 *          builds from events/CATEGORY/EVENT/format on the running kernel, so
 *          it is right on any kernel (kernel structs read through borrowed
 *          headers are not). prev_state is the kernel's report of the task's
 *          state: 0 runnable (R), 1 sleeping (S), 2 uninterruptible (D)...;
 *          256 (TASK_REPORT_MAX) means it was preempted while runnable (R+).
 *          on_switch runs in the context of the task leaving the CPU, so a
 *          --comm or --pid filter keeps the switches *away from* that task.
 *          An openat already in flight when tracing starts has no entry time
 *          and is not counted.
 */
struct switch_event {
    u64 ts;               /* bpf_ktime_get_ns(): shown as wall-clock time */
    s64 prev_state;
    u32 cpu;
    u32 prev_pid;         /* thread ids, as the kernel's pid field */
    u32 next_pid;
    char prev_comm[16];
    char next_comm[16];
};

BPF_RINGBUF_OUTPUT(switches, 256);

int on_switch(struct tracepoint__sched__sched_switch *args) {
    struct switch_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.cpu = bpf_get_smp_processor_id();
    e.prev_pid = args->prev_pid;
    e.next_pid = args->next_pid;
    e.prev_state = args->prev_state;
    __builtin_memcpy(&e.prev_comm, args->prev_comm, sizeof(e.prev_comm));
    __builtin_memcpy(&e.next_comm, args->next_comm, sizeof(e.next_comm));
    switches.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}

BPF_HASH(start, u32, u64, 10240);   /* thread id -> when it entered openat */
BPF_HISTOGRAM(latency_us, int, 64); /* log2 buckets of microseconds */
BPF_ARRAY(entered, u64, 1);         /* openat entries seen, to check the pairing */

int on_enter(struct tracepoint__syscalls__sys_enter_openat *args) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 ts = bpf_ktime_get_ns();
    start.update(&tid, &ts);
    entered.increment(0);
    return 0;
}

int on_exit(struct tracepoint__syscalls__sys_exit_openat *args) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 *ts = start.lookup(&tid);
    if (!ts)
        return 0; /* entered before we attached */
    u64 us = (bpf_ktime_get_ns() - *ts) / 1000;
    latency_us.increment(bpf_log2l(us));
    start.delete(&tid);
    return 0;
}

struct hit_key {
    u32 pid;
    char comm[16];
};
BPF_HASH(hits, struct hit_key, u64, 10240);

int count_hits(void *ctx) {
    struct hit_key k = {};
    k.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    hits.increment(k);
    return 0;
}
