/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Counters, connection keys and the enabled-cgroup filter used by every program (events: events.bpf.h). */
#ifndef KLOAK_COMMON_BPF_H
#define KLOAK_COMMON_BPF_H

#include "kloak.h"
#include "maps.bpf.h"

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

static __always_inline void addr_from_v4(struct kloak_addr *addr, __u32 be_v4)
{
	__builtin_memset(addr, 0, sizeof(*addr));
	addr->bytes[10] = 0xff;
	addr->bytes[11] = 0xff;
	__builtin_memcpy(&addr->bytes[12], &be_v4, 4);
}

#endif
