/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Maps of the write path (rewrite.bpf.h, hpack.bpf.h): bindings (S6), the
 * restore lists (S5), and the per-CPU scratch of the scan and of HPACK.
 */
#ifndef KLOAK_REWRITE_MAPS_H
#define KLOAK_REWRITE_MAPS_H

#include "kloak.h"

/* S6: (cgroup, secret id) pairs allowed to rewrite. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_BINDINGS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_binding_key);
	__type(value, __u8);
} bindings SEC(".maps");

/* Pending write-backs (S5); built in place, one entry per writing thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_restore_key);
	__type(value, struct kloak_restore);
} restores SEC(".maps");

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
