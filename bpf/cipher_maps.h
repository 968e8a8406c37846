/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The ciphertext strategy's shared state: its per-CPU scratch and the maps
 * its stages hand each other. The real value never enters the process.
 * AES-GCM is a stream cipher with a linear tag, so replacing plaintext bytes
 * P by P' only needs C ^= P ^ P' at the same positions and
 * tag ^= sum(D_k * H^(n-k+2)) over the changed blocks (tc.bpf.h applies both
 * to the packets). The stages:
 *
 * 1. Key capture (cipher_keys.bpf.h, gotls.bpf.h for Go): the library names
 *    the session's write cipher and key in EVP_CipherInit_ex, called by the
 *    thread while it is inside a TLS call on that object (handshake, read or
 *    write). H = AES_K(0^128) is derived there; the key itself is dropped.
 *    Nothing is read from library structs, so no layout can be wrong: an
 *    unseen key means "unknown", fail closed.
 * 2. Queueing: the write hook queues each allowed placeholder with its
 *    offset in the plaintext (ct_queue in candidate.bpf.h, into
 *    cipher_bind.bpf.h's queue).
 * 3. Binding (cipher_bind.bpf.h): the thread's socket writes inside that call
 *    carry the records. Their headers give each record's plaintext range, the
 *    socket's write_seq gives their TCP sequence numbers: each placeholder
 *    becomes XOR patches keyed by (connection, sequence), plus the tag's
 *    (cipher_tag.bpf.h).
 *
 * cipher_selftest.bpf.h lets userspace check the arithmetic at load time.
 */
#ifndef KLOAK_CIPHER_MAPS_H
#define KLOAK_CIPHER_MAPS_H

#include "kloak.h"
#include "gcm.bpf.h"
#include "sock.bpf.h"

#define DBUF_SIZE 8192                   /* > 15 + KLOAK_MAX_SECRET + 16, a power of two */

struct ct_record {
	__u32 body_seq;                  /* sequence number of the first ciphertext byte */
	__u32 pt_start;                  /* plaintext of the write it carries */
	__u32 data_len;
	__u32 ct_len;                    /* ciphertext bytes (the tag follows them) */
};

/* A placeholder's bytes in one record, patched, its tag share still to add. */
struct ct_part {
	struct kloak_secret_key key;
	__u64 value_id;
	__u32 slot;                      /* its patch */
	__u32 secret_off;                /* first byte, in the secret */
	__u32 ct_start;                  /* ... and in the record's ciphertext */
	__u32 ct_end;
};

/* Per-CPU working memory of the ciphertext path. */
struct ct_scratch {
	struct aes_scratch aes;
	struct kloak_ct_session sess;
	struct ct_record recs[KLOAK_CT_MAX_RECORDS];
	__u32 nrec;
	__u32 parse_off;                 /* next record header in the socket write */
	__u32 first_pt;                  /* plaintext of the write before these records */
	__u32 covered;                   /* ... and after them */
	__u32 need;                      /* patch slots this write needs */
	__u32 rec_parts;
	__u32 free;
	__u32 slot;                      /* take_slot's answer */
	__u32 from;                      /* dbuf fill: secret bytes from here */
	__u32 lead;                      /* ... go to dbuf[lead] on */
	struct ct_record rec;            /* the record being bound */
	struct ct_part parts[KLOAK_CT_MAX_ITEMS];  /* ... and its placeholders' patches */
	__u32 nparts;
	/* off the stack: the socket-write programs share 512 bytes with their callbacks (6.1) */
	struct kloak_flow_key fkey;
	struct peer peer;
	/* GHASH difference, by Horner's rule over the changed blocks */
	struct gf128 acc;
	struct gf128 d;                  /* the difference of block `cur`, still open */
	struct gf_mul mul;
	__u32 cur;
	__u32 has;
	/*
	 * The XOR bytes of the part being summed, laid out from the start of
	 * its first block with zeros around it, so each block is one 16-byte
	 * load (a branch per byte would be a verifier state per byte).
	 */
	__u8 dbuf[DBUF_SIZE] __attribute__((aligned(8)));
	__u8 selftest_delta[64];         /* the self-test's input, off its context */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_scratch);
} ct_buf SEC(".maps");

static __always_inline struct ct_scratch *ct_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ct_buf, &zero);
}

/* ---- 1. key capture ---- */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_conn_key);      /* (tgid, SSL*) */
	__type(value, struct kloak_ct_session);
} ct_sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_conn_key);      /* (tgid, EVP_CIPHER_CTX*) */
	__type(value, struct kloak_ct_cipher);
} ct_ciphers SEC(".maps");

/*
 * The network namespaces whose packets a tc filter patches, set by the loader
 * once it attached there (the host's own for `kloak run`, each pod's when the
 * host end of its interface is wired). A record bound anywhere else would leave
 * unpatched while its event claimed a rewrite.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_WIRED_NETNS);
	__type(key, __u32);                      /* network namespace inode */
	__type(value, __u32);
} ct_wired SEC(".maps");

/* ---- 2. queueing ---- */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);                      /* thread id */
	__type(value, struct kloak_ct_write);
} ct_writes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kloak_ct_write);
} ct_write_zero SEC(".maps");

/* ---- 3. binding ---- */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KLOAK_CT_MAX_FLOWS);
	__type(key, struct kloak_flow_key);
	__type(value, struct kloak_ct_flow);
} ct_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kloak_ct_flow);
} ct_flow_zero SEC(".maps");

#endif
