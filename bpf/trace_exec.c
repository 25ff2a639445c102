/*
 * trace_exec.c - the fast track's program: "exec called by PID N" for every
 * execve, from a kprobe on the kernel's execve entry.
 *
 * Usage:   %%bpf --file bpf/trace_exec.c -k __x64_sys_execve --run "ls"
 *          (on arm64 the function is __arm64_sys_execve)
 * Caveat:  needs a kernel with kprobes (CONFIG_KPROBES). Where there are none,
 *          ebpfkit says so and offers syscalls:sys_enter_execve, the tracepoint
 *          that sees the same calls: see exec_tracepoint.c.
 */
int trace_exec(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    bpf_trace_printk("exec called by PID %d\n", pid);
    return 0;
}
