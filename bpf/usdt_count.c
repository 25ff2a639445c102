/*
 * usdt_count.c - hits of a USDT (user-level static) probe, per process.
 *
 *   count_hits  any USDT probe: hits per process id and command name, in the
 *               `hits` map (what `ebpfkit usdt BINARY PROBE` runs). It reads no
 *               argument, so it attaches to any probe whatever its arguments.
 *
 * Usage:   ebpfkit usdt /usr/bin/python3.11 gc__start --run "python3 -c 'import gc; gc.collect()'"
 *          %bpf --file usdt_count.c --usdt /usr/bin/python3.11:gc__start --pid self
 * Caveats: a probe behind a semaphore computes its arguments only while the
 *          semaphore is raised; the kernel raises it while the probe is attached
 *          (in the traced process, or in every process of the binary). Python 3.11's
 *          function__entry and line probes fire only while a trace or profile
 *          function is set (sys.settrace/sys.setprofile): its eval loop checks them
 *          on its tracing path alone. function__return fires at every return.
 */
struct hit_key {
    u32 pid;
    char comm[16];
};

BPF_HASH(hits, struct hit_key, u64, 10240);

int count_hits(struct pt_regs *ctx) {
    struct hit_key k = {};
    k.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    hits.increment(k);
    return 0;
}
