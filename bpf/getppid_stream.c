/*
 * getppid_stream.c - one event per getppid() call, streamed to user space
 * through a ring buffer, and an in-kernel count of every event produced.
 *
 * Traces:  the syscalls:sys_enter_getppid tracepoint (no kprobes needed).
 * Usage:   %bpf --file bpf/getppid_stream.c --comm getppid-burst
 *              --run "/usr/bin/python3 /tmp/getppid_burst.py 10000 5"
 *          (lesson 04 writes that workload, which renames itself getppid-burst).
 *          Always filter (--comm or --pid): every process on the
 *          machine may call getppid(), and each call becomes a record.
 * Sends:   `events`: a record {ts, pid, tid, cpu, comm} per call, in one ring
 *          buffer shared by all CPUs, in the order the records were reserved.
 *          `produced[0]`: how many calls the program saw. What user space did
 *          not receive was lost, so received + lost == produced (ebpfkit counts
 *          failed ring-buffer reservations in result.lost).
 * Caveats: 1024 pages (4 MiB) hold about 87,000 records of 48 bytes (40 of
 *          data, 8 of header) even if user space reads nothing; a longer burst
 *          than the reader can keep up with loses records (see lesson 04, which
 *          shrinks the buffer to one page to make that happen). The same stream
 *          through a perf buffer (BPF_PERF_OUTPUT + events.perf_submit) is in
 *          lesson 04 too.
 */
struct event {
    u64 ts;        /* bpf_ktime_get_ns(): shown as wall-clock time */
    u32 pid;       /* process (tgid) */
    u32 tid;       /* thread */
    u32 cpu;       /* the CPU the call ran on */
    char comm[16];
};

BPF_RINGBUF_OUTPUT(events, 1024);
BPF_ARRAY(produced, u64, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int zero = 0;
    produced.atomic_increment(zero);

    struct event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return 0;  /* buffer full: the record is lost (and counted) */
    u64 id = bpf_get_current_pid_tgid();
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->cpu = bpf_get_smp_processor_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    events.ringbuf_submit(e, 0);
    return 0;
}
