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

/* Processes stopped at exec, not yet resumed (see struct kloak_held). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_HELD);
	__type(key, __u32);
	__type(value, struct kloak_held);
} held SEC(".maps");

/*
 * The boot time (ns) of the agent's last sign of life, 0 once it stopped on
 * purpose. Pinned links outlive the agent; a hold nobody will answer would
 * stop a workload until the next agent is up, so execs are held only while
 * an agent is alive.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} agent_heartbeat SEC(".maps");

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
	__u32 huff_count;
	__u32 huff_cand[KLOAK_MAX_MATCHES];  /* byte offset << 3 | bit shift */
	__u8 chunk[64] __attribute__((aligned(8)));  /* a piece of the user's buffer, compared */
	/* HTTP/2 walk (hpack.bpf.h): scalars kept here, off the 512-byte stack */
	__u32 h2_off;                    /* frame walk position */
	__u32 huff_from;                 /* header block being searched */
	__u32 huff_to;
	__u32 huff_block;                /* eight bytes with a possible prefix */
	__u64 huff_next_free;            /* in bits: candidates before lie inside a match */
	__u8 buf[KLOAK_SCAN_MAX + 64];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_scratch);
} scan_buf SEC(".maps");

/*
 * Per-CPU scratch for one Huffman-coded placeholder: the user's bytes as they
 * are now, and the same bytes with the placeholder's (or the value's) bits
 * spliced in at the right shift.
 */
#define HUFF_BUF 8192

struct huff_scratch {
	/*
	 * Loop state lives here, not on the stack: the verifier does not track
	 * values in map memory, so a counter stepped by a bpf_loop callback does
	 * not make every iteration a new state.
	 */
	__u64 acc;                       /* encoder: bits not yet written out */
	__u32 pending;                   /* how many */
	__u32 out_len;                   /* whole bytes written to out[] */
	__u32 bits;                      /* encoded so far */
	__u32 count;                     /* decoder: characters decoded */
	__u64 bit;                       /* decoder: position in the write */
	__u32 ended;                     /* decoder: the write ended inside the key */
	__u32 value;                     /* encoder: 1 encodes the real value */
	__u8 chars[KLOAK_KEY_LEN];
	__u8 user[HUFF_BUF];
	__u8 out[HUFF_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct huff_scratch);
} huff_buf SEC(".maps");

/*
 * Memory-BIO runtimes (Node.js, Python asyncio) encrypt into a buffer and
 * send it after the TLS call returns: the TLS object a thread last used
 * without a known socket, until that thread's next TCP write.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} bio_pending SEC(".maps");

/* A zeroed connection record: a struct this size on the stack would not fit the write path's frame. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kloak_conn);
} conn_zero SEC(".maps");

/* A zeroed restore list to create per-thread entries from. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kloak_restore);
} restore_zero SEC(".maps");

#endif
