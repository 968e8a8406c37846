/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps shared by every kloak program. Names stay under the kernel's 15 characters. */
#ifndef KLOAK_MAPS_BPF_H
#define KLOAK_MAPS_BPF_H

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

/* S6: (cgroup, secret id) pairs allowed to rewrite. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_BINDINGS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_binding_key);
	__type(value, __u8);
} bindings SEC(".maps");

/* Host patterns by name hash (exact names and "*." suffixes). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_SECRETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_name_key);
	__type(value, struct kloak_name);
} names SEC(".maps");

/* S3: (address, host pattern) verified by a trusted resolver, with expiry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct kloak_verified_key);
	__type(value, struct kloak_verified);
} verified SEC(".maps");

/* Trusted DNS resolvers (address and port). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct kloak_resolver_key);
	__type(value, __u8);
} resolvers SEC(".maps");

/* Outstanding queries to trusted resolvers, by (resolver, ports, txid). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_dns_query_key);
	__type(value, __u64);
} dns_queries SEC(".maps");

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

/* Pending write-backs (S5); built in place, one entry per writing thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_restore_key);
	__type(value, struct kloak_restore);
} restores SEC(".maps");

/* Executables userspace has inspected: their exec is not held again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KLOAK_MAX_FILES);
	__type(key, struct kloak_file_key);
	__type(value, __u8);             /* enum kloak_file_state */
} files SEC(".maps");

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

/*
 * Per-CPU scratch for scanning a write. A preempted program may find it
 * overwritten, so it only ever yields candidates: every rewrite is preceded
 * by a full comparison against the user's buffer itself.
 */
struct scan_scratch {
	__u32 count;
	__u32 cand[KLOAK_MAX_MATCHES];
	__u8 buf[KLOAK_SCAN_MAX + 64];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_scratch);
} scan_buf SEC(".maps");

/* A zeroed restore list to create per-thread entries from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kloak_restore);
} restore_zero SEC(".maps");

#endif
