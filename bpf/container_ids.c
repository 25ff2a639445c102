/*
 * container_ids.c - lesson 13: who is calling, as the host and as a container
 * see it. One event per getppid() call (syscalls:sys_enter_getppid):
 *
 *   host_pid, host_tid  bpf_get_current_pid_tgid(): the IDs in the host's
 *                       (initial) PID namespace, the ones ps shows outside
 *   ns_pid, ns_tid      bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO):
 *                       the IDs inside the PID namespace whose nsfs file has
 *                       that device and inode (stat -L /proc/PID/ns/pid)
 *   ns_err              that helper's answer: 0, or -EINVAL (-22) for a task
 *                       that is not in that namespace (then ns_* are 0)
 *   cgroup_id           bpf_get_current_cgroup_id(): the task's cgroup v2, by
 *                       the inode number of its directory in the cgroup2 mount
 *
 * Usage:   ebpfkit.trace(bpf_source("container_ids.c"), duration=2,
 *                        cflags=[f"-DPIDNS_DEV={dev}", f"-DPIDNS_INO={ino}"])
 *          add -DCGROUP_ID=N to keep only the tasks of cgroup N (checked in
 *          the kernel, before anything is sent).
 * Caveats: bpf_get_ns_current_pid_tgid needs Linux 5.7. It compares
 *          PIDNS_DEV with the kernel's own encoding of the nsfs device
 *          number, which is the st_dev that stat gives only for a device
 *          0:N with N < 256 (nsfs is 0:4 on common systems); otherwise it
 *          answers -EINVAL for every task. cgroup ids are those of the
 *          cgroup v2 hierarchy, also on a machine that mounts v1 controllers
 *          next to it (the "0::" line of /proc/PID/cgroup).
 */
#ifndef PIDNS_DEV
#define PIDNS_DEV 0
#endif
#ifndef PIDNS_INO
#define PIDNS_INO 0
#endif

struct id_event {
    u64 cgroup_id;
    u32 host_pid;
    u32 host_tid;
    u32 ns_pid;
    u32 ns_tid;
    int ns_err;
    char comm[16];
};

BPF_RINGBUF_OUTPUT(events, 64);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u64 cgroup_id = bpf_get_current_cgroup_id();
#ifdef CGROUP_ID
    if (cgroup_id != CGROUP_ID)
        return 0;
#endif
    struct id_event e = {};
    struct bpf_pidns_info ns = {};
    u64 id = bpf_get_current_pid_tgid();
    e.cgroup_id = cgroup_id;
    e.host_pid = id >> 32;
    e.host_tid = (u32)id;
    e.ns_err = bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO, &ns, sizeof(ns));
    e.ns_pid = ns.tgid;
    e.ns_tid = ns.pid;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}
