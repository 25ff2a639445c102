/*
 * cpu_sample.c - lesson 07: sampling every CPU with a timer (perf event
 * cpu-clock) and recording what it was running, with its stacks.
 *
 * Attached as a software perf event at F Hz, one sampler per CPU: each runs
 * in its own CPU's timer interrupt and sees the task that CPU was running.
 *
 *   cpu_samples  samples per CPU: compare with F x seconds, what a sampler
 *                that never missed a tick would have taken
 *   samples      samples per (pid, cpu, user stack, kernel stack, comm)
 *   stacks       the stack traces those ids point to
 *
 * Usage:   %bpf --file cpu_sample.c -P cpu-clock:99 -d 2
 *          ebpfkit perf -F 99 -d 2 --run "taskset -c 0 ./busy-program"
 * Caveats: 99 Hz rather than 100 so the sampler does not tick in lockstep
 *          with the kernel's own 100 Hz (or 1000 Hz) timers and their work.
 *          A user stack is walked through frame pointers: code built without
 *          them (most distro libraries, -O2 builds) shows short or broken
 *          stacks; build what you profile with -fno-omit-frame-pointer.
 *          User addresses become names through the process's memory map
 *          (/proc/PID/maps): read the stacks while the process still runs,
 *          or its frames show as [unknown]. Kernel addresses use /proc/kallsyms.
 *          A sample taken in user mode has no kernel stack (id -14, EFAULT), a
 *          kernel thread no user stack; -17 (EEXIST) means two stacks hashed to
 *          one slot of `stacks` and the newer was dropped (make it bigger).
 *          With --pid/--comm the filter runs first: cpu_samples then counts
 *          only that process's samples. Hardware events (cycles) need a PMU,
 *          which virtual machines often lack: cpu-clock works everywhere.
 */
struct sample_key {
    u32 pid;              /* process (tgid); 0 is the idle task, swapper/N */
    u32 cpu;
    int user_stack_id;    /* into `stacks`; negative: no user stack */
    int kernel_stack_id;  /* into `stacks`; negative: no kernel stack */
    char comm[16];
};

BPF_HASH(cpu_samples, u32, u64, 1024);
BPF_HASH(samples, struct sample_key, u64, 16384);
BPF_STACK_TRACE(stacks, 16384);

int on_sample(struct bpf_perf_event_data *ctx) {
    struct sample_key k = {};
    k.cpu = bpf_get_smp_processor_id();
    cpu_samples.increment(k.cpu);
    k.pid = bpf_get_current_pid_tgid() >> 32;
    k.user_stack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    k.kernel_stack_id = stacks.get_stackid(ctx, 0);
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    samples.increment(k);
    return 0;
}
