/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Counters, events and the enabled-cgroup filter used by every program. */
#ifndef KLOAK_COMMON_BPF_H
#define KLOAK_COMMON_BPF_H

#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* Set by the loader before load; see enum kloak_rewrite_mode. */
const volatile __u32 cfg_rewrite_mode = KLOAK_MODE_OBSERVE_REQUESTED;
/* Set by the loader before load; see enum kloak_strategy. */
const volatile __u32 cfg_strategy = KLOAK_STRATEGY_AUTO;

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	if (value)
		*value += 1;
}

static __always_inline void count_n(__u32 counter, __u64 n)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	if (value)
		*value += n;
}

static __always_inline void count_blocked(__u32 reason)
{
	if (reason < KLOAK_REASON_MAX)
		count(KLOAK_CTR_BLOCKED_BASE + reason);
}

/* A TLS object (or an object of the library, such as a cipher context) of this process. */
static __always_inline struct kloak_conn_key conn_key(__u64 tls_ptr)
{
	struct kloak_conn_key key = {
		.tgid = bpf_get_current_pid_tgid() >> 32,
		.tls_ptr = tls_ptr,
	};
	return key;
}

/* The current task's cgroup id when kloak protects it, else 0. */
static __always_inline __u64 enabled_cgroup(void)
{
	__u64 id = bpf_get_current_cgroup_id();

	return bpf_map_lookup_elem(&cgroups, &id) ? id : 0;
}

/*
 * A zeroed event for the current task, or NULL when the ring buffer is full.
 * Events are submitted without a wakeup (BPF_RB_NO_WAKEUP): waking the reader
 * costs the writing thread an interrupt per decision, while the loader polls
 * every 50 ms anyway.
 */
static __always_inline struct kloak_event *event_reserve(__u32 kind, __u32 hook)
{
	struct kloak_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(KLOAK_CTR_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->kind = kind;
	e->hook = hook;
	e->fd = -1;
	return e;
}

static __always_inline void event_set_task(struct kloak_event *e, __u64 cgroup_id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->cgroup_id = cgroup_id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

static __always_inline void addr_from_v4(struct kloak_addr *addr, __u32 be_v4)
{
	__builtin_memset(addr, 0, sizeof(*addr));
	addr->bytes[10] = 0xff;
	addr->bytes[11] = 0xff;
	__builtin_memcpy(&addr->bytes[12], &be_v4, 4);
}

#endif
