/*
 * syscall_count.c - the course's `stats`: how many times each system call was
 * entered, counted in the kernel in a hash map keyed by the syscall's number.
 *
 * Attaches: raw_syscalls:sys_enter (a tracepoint: every system call of every
 *           process passes through it; works on kernels without kprobes).
 * Usage:    %bpf --file bpf/syscall_count.c --comm ls --run "ls -l /usr/bin"
 *           ebpfkit stats --comm ls --run "ls -l /usr/bin"
 * Map:      counts: key = syscall number (args->id), value = calls. ebpfkit shows
 *           it as a DataFrame (key, value); `ebpfkit stats` turns numbers into
 *           names with bcc.syscall.syscall_name.
 *           full: updates that found the map full (a new key, no room left).
 * Options:  -DPER_CPU makes `counts` a per-CPU hash: each CPU adds to its own
 *           copy of the value, with no shared cache line and no atomic
 *           instruction; user space reads one value per CPU and sums them.
 *           -DMAX_ENTRIES=N sizes the map (default 1024; x86-64 has ~460 syscalls).
 * Caveats:  counts are taken at syscall *entry*: a call that never returns
 *           (exit_group) is counted, one already blocked when the trace starts
 *           (a read waiting for input) is not. bcc's syscount-bpfcc counts at
 *           exit, so those two can differ by one; every other count agrees.
 *           The pid/comm filter (--pid, --comm) is checked in the kernel,
 *           before the map is touched.
 */
#ifndef MAX_ENTRIES
#define MAX_ENTRIES 1024
#endif

#ifdef PER_CPU
BPF_PERCPU_HASH(counts, u32, u64, MAX_ENTRIES);
#else
BPF_HASH(counts, u32, u64, MAX_ENTRIES);
#endif
BPF_ARRAY(full, u64, 1);

TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
    if (args->id < 0)           /* -1: a syscall skipped by ptrace or seccomp */
        return 0;
    u32 id = args->id;
    u64 zero = 0;
    u64 *count = counts.lookup_or_try_init(&id, &zero);
    if (!count) {               /* a new key and no room for it */
        full.increment(0);
        return 0;
    }
#ifdef PER_CPU
    (*count)++;                 /* this CPU's own copy: no other CPU writes it */
#else
    __sync_fetch_and_add(count, 1);     /* shared by every CPU: add atomically */
#endif
    return 0;
}
