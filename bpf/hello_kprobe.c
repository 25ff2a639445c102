/*
 * hello_kprobe.c - lesson 01's program: "kprobe triggered by PID N (comm)"
 * once per call of a kernel function, through bpf_trace_printk().
 *
 * Usage:   ebpfkit kprobe do_sys_openat2 --run "cat /etc/hostname" --comm cat
 *          %bpf --file bpf/hello_kprobe.c -k do_sys_openat2
 *               --fallback syscalls:sys_enter_openat --comm cat --run "cat /etc/hostname"
 * Reads:   only BPF helpers (the PID and the command name of the task that made
 *          the call), which are exact on every kernel: no kernel struct is read.
 * Caveats: needs a kernel with kprobes (CONFIG_KPROBES). Where there are none,
 *          `ebpfkit kprobe` and %%bpf --fallback attach this same function to the
 *          matching tracepoint (syscalls:sys_enter_openat for do_sys_openat2) and
 *          say so: the function touches no argument, so it fits either context.
 *          bpf_trace_printk() writes to the machine-wide trace_pipe, which one
 *          reader at a time may open; it is for hello-worlds, not for volume
 *          (use BPF_PERF_OUTPUT or BPF_RINGBUF_OUTPUT for that, see lesson 02).
 */
int hello(void *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;  /* the process (tgid), not the thread */
    char comm[16] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    bpf_trace_printk("kprobe triggered by PID %d (%s)\n", pid, comm);
    return 0;
}
