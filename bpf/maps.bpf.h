/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Maps shared by several stages; each stage's own maps are in its <stage>_maps.h.
 * Names stay under the kernel's 15 characters.
 */
#ifndef KLOAK_MAPS_BPF_H
#define KLOAK_MAPS_BPF_H

#include "kloak.h"

/* Enabled cgroup ids (v2 ids): the first check of every hook. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_CGROUPS);
	__type(key, __u64);
	__type(value, __u32);
} cgroups SEC(".maps");

/* Placeholder key -> secret. Not preallocated: entries are large and few. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_SECRETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_secret_key);
	__type(value, struct kloak_secret);
} secrets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_RETIRED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_retired_key);
	__type(value, struct kloak_secret);
} retired SEC(".maps");

/*
 * The secret with exactly this value: the current one, or the one it
 * replaced while records bound to it were in flight. NULL: neither (fail
 * closed).
 */
static __always_inline struct kloak_secret *secret_value(struct kloak_secret_key *key, __u64 value_id)
{
	struct kloak_secret *secret = bpf_map_lookup_elem(&secrets, key);
	struct kloak_retired_key old = { .key = *key, .value_id = value_id };

	if (secret && secret->value_id == value_id)
		return secret;
	return bpf_map_lookup_elem(&retired, &old);
}

/* S3: (address, host pattern) verified by a trusted resolver, with expiry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct kloak_verified_key);
	__type(value, struct kloak_verified);
} verified SEC(".maps");

/* TLS object -> its socket fd and ClientHello server name. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct kloak_conn_key);
	__type(value, struct kloak_conn);
} conns SEC(".maps");

/* Thread id -> TLS object while the thread is inside the TLS library. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct kloak_tls_call);
} tls_calls SEC(".maps");

/* Hooked binaries, indexed by the uprobe's attach cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KLOAK_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct kloak_target);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KLOAK_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

#endif
