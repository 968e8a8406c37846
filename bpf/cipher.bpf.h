/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The ciphertext strategy, up to the wire: the real value never enters the
 * process. AES-GCM is a stream cipher with a linear tag, so replacing
 * plaintext bytes P by P' only needs C ^= P ^ P' at the same positions and
 * tag ^= sum(D_k * H^(n-k+2)) over the changed blocks (tc.bpf.h applies both
 * to the packets).
 *
 * 1. Key capture: the library names the session's write cipher and key in
 *    EVP_CipherInit_ex, called by the thread while it is inside a TLS call
 *    on that object (handshake, read or write). H = AES_K(0^128) is derived
 *    here; the key itself is dropped. Nothing is read from library structs,
 *    so no layout can be wrong: an unseen key means "unknown", fail closed.
 * 2. Queueing: the write hook queues each allowed placeholder with its
 *    offset in the plaintext (rewrite.bpf.h).
 * 3. Binding: the thread's socket writes inside that call carry the
 *    records. Their headers give each record's plaintext range, the
 *    socket's write_seq gives their TCP sequence numbers: each placeholder
 *    becomes XOR patches keyed by (connection, sequence), plus the tag's.
 */
#ifndef KLOAK_CIPHER_BPF_H
#define KLOAK_CIPHER_BPF_H

#include "gcm.bpf.h"

/* OpenSSL's NIDs, stable since 1.0 (and BoringSSL's). */
#define NID_AES_128_GCM 895
#define NID_AES_256_GCM 901

#define TLS_APPLICATION_DATA 0x17
#define TLS_TAG_LEN 16
#define TLS12_EXPLICIT_NONCE 8
#define TLS_RECORD_MAX (16384 + 256)
#define GHASH_BLOCKS_MAX 1100            /* a record's ciphertext, in 16-byte blocks */
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

/* ---- GHASH difference ---- */

/* *acc = *acc * H^e, from the session's H^(2^i). */
static __always_inline void gf128_mul_pow_into(struct gf_mul *m, struct gf128 *acc,
					       struct kloak_ct_session *sess, __u32 e)
{
	for (__u32 i = 0; i < KLOAK_CT_POW_BITS; i++) {
		if ((e >> i) == 0)
			break;
		if ((e >> i) & 1)
			gf128_mul_into(m, acc, sess->h_pow[i]);
	}
}

/* Closes the open block: acc = (acc ^ d) * H. */
static __always_inline void tag_close_block(struct ct_scratch *s, struct kloak_ct_session *sess)
{
	s->acc.hi ^= s->d.hi;
	s->acc.lo ^= s->d.lo;
	gf128_mul_into(&s->mul, &s->acc, sess->h);
	s->d.hi = s->d.lo = 0;
}

/* H^(2^i) for every i, from sess->h. */
static __always_inline void ct_session_powers(struct gf_mul *m, struct kloak_ct_session *sess)
{
	struct gf128 p = gf128_load(sess->h);

	for (__u32 i = 0; i < KLOAK_CT_POW_BITS; i++) {
		gf128_store(sess->h_pow[i], p);
		p = gf128_mul(m, p, p);
	}
}

struct tag_loop {
	struct ct_scratch *s;
	struct kloak_ct_session *sess;
	__u32 part_end;                  /* ciphertext offset in the record */
	__u32 first_block;
};

/* Zeros the block before a part of n bytes at ciphertext offset start, whose bytes go at dbuf[start % 16]. */
static __always_inline void dbuf_open(struct ct_scratch *s)
{
	__builtin_memset(s->dbuf, 0, 16);
}

/* ... and the bytes after it, up to the next block boundary and beyond. */
static __always_inline void dbuf_close(struct ct_scratch *s, __u32 start, __u32 n)
{
	__u32 end = (start & 15) + n;

	for (__u32 k = 0; k < 16; k++)
		s->dbuf[(end + k) & (DBUF_SIZE - 1)] = 0;
}

static __always_inline void tag_begin(struct ct_scratch *s)
{
	s->acc.hi = s->acc.lo = 0;
	s->d.hi = s->d.lo = 0;
	s->has = 0;
	s->cur = 0;
}

/* One 16-byte block of a part: close the open block when this is a later one. */
static long tag_block_step(__u64 index, void *data)
{
	struct tag_loop *t = data;
	struct ct_scratch *s = t->s;
	__u32 j = t->first_block + (__u32)index, base = j * 16, off;

	if (base >= t->part_end || j >= GHASH_BLOCKS_MAX)
		return 1;
	if (s->has && j != s->cur) {
		tag_close_block(s, t->sess);
		gf128_mul_pow_into(&s->mul, &s->acc, t->sess, j - s->cur - 1);
	}
	s->has = 1;
	s->cur = j;
	off = ((__u32)index * 16) & (DBUF_SIZE - 16);
	s->d.hi ^= __builtin_bswap64(*(__u64 *)&s->dbuf[off]);
	s->d.lo ^= __builtin_bswap64(*(__u64 *)&s->dbuf[off + 8]);
	return 0;
}

/*
 * Adds bytes [part_start, part_end) of the record, whose XOR bytes are in
 * s->dbuf (dbuf_open, the bytes, dbuf_close). Parts come in order.
 */
static __always_inline void tag_add_part(struct ct_scratch *s, struct kloak_ct_session *sess,
					 __u32 part_start, __u32 part_end)
{
	struct tag_loop t = {
		.s = s,
		.sess = sess,
		.part_end = part_end,
		.first_block = part_start / 16,
	};

	if (part_end <= part_start)
		return;
	bpf_loop((part_end - 1) / 16 - part_start / 16 + 1, tag_block_step, &t, 0);
}

/* The tag difference for a record of ct_len ciphertext bytes. */
static __always_inline struct gf128 tag_finish(struct ct_scratch *s, struct kloak_ct_session *sess, __u32 ct_len)
{
	__u32 blocks = (ct_len + 15) / 16;

	if (!s->has || s->cur >= blocks)
		return (struct gf128){};
	tag_close_block(s, sess);
	gf128_mul_pow_into(&s->mul, &s->acc, sess, blocks - s->cur);
	return s->acc;
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

/* The key bytes are wiped from scratch as soon as H is known. */
static __always_inline void ct_derive_h(struct ct_scratch *s, const __u8 *key, __u32 key_len)
{
	__builtin_memset(s->aes.state, 0, sizeof(s->aes.state));
	if (bpf_probe_read_user(s->aes.key, key_len == 32 ? 32 : 16, key)) {
		s->sess.cipher = KLOAK_CIPHER_UNKNOWN;
		return;
	}
	aes_encrypt_block(&s->aes, key_len);
	__builtin_memcpy(s->sess.h, s->aes.state, 16);
	__builtin_memset(s->aes.key, 0, sizeof(s->aes.key));
	__builtin_memset(s->aes.w, 0, sizeof(s->aes.w));
	ct_session_powers(&s->mul, &s->sess);
	count(KLOAK_CTR_CT_KEYS);
}

/*
 * EVP_CipherInit_ex(ctx, cipher, engine, key, iv, enc). Inside a TLS call,
 * with enc set: a key is the object's new write key (handshake keys, then
 * application keys, then any key update: the last one wins); an IV alone is
 * TLS 1.3's per-record nonce setup.
 */
SEC("uprobe")
int BPF_UPROBE(handle_cipher_init, void *cctx, void *cipher, void *engine, const __u8 *key, const __u8 *iv, int enc)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct kloak_tls_call *call = bpf_map_lookup_elem(&tls_calls, &tid);
	struct kloak_conn_key ctx_key = conn_key((__u64)cctx), ssl_key;
	struct kloak_ct_session *old;
	struct kloak_ct_cipher *known;
	struct ct_scratch *s;

	if (!call || !enabled_cgroup())
		return 0;
	if (cipher) {
		struct {
			int nid;
			int block_size;
			int key_len;
		} head;
		struct kloak_ct_cipher info = {};

		/* struct evp_cipher_st starts nid, block_size, key_len in OpenSSL 1.1, 3.x and BoringSSL. */
		if (!bpf_probe_read_user(&head, sizeof(head), cipher)) {
			info.nid = head.nid;
			info.key_len = head.key_len;
			info.encrypt = enc != 0;
			bpf_map_update_elem(&ct_ciphers, &ctx_key, &info, BPF_ANY);
		}
	}
	known = bpf_map_lookup_elem(&ct_ciphers, &ctx_key);
	/* OpenSSL 3 sets the TLS 1.3 key with enc = -1, "as set before". */
	if (enc == -1)
		enc = known ? (int)known->encrypt : 0;
	if (enc == 0)
		return 0;
	ssl_key = conn_key(call->tls_ptr);
	old = bpf_map_lookup_elem(&ct_sessions, &ssl_key);
	if (!key) {
		if (iv && old && old->cipher_ctx == (__u64)cctx)
			old->tls13 = 1;
		return 0;
	}
	s = ct_scratch();
	if (!s)
		return 0;
	__builtin_memset(&s->sess, 0, sizeof(s->sess));
	s->sess.cipher_ctx = (__u64)cctx;
	s->sess.tls13 = old ? old->tls13 : 0;
	if (!known) {
		s->sess.cipher = KLOAK_CIPHER_UNKNOWN;
	} else if (known->nid == NID_AES_128_GCM && known->key_len == 16) {
		s->sess.cipher = KLOAK_CIPHER_AES_128_GCM;
	} else if (known->nid == NID_AES_256_GCM && known->key_len == 32) {
		s->sess.cipher = KLOAK_CIPHER_AES_256_GCM;
	} else {
		s->sess.cipher = KLOAK_CIPHER_OTHER;
	}
	if (known)
		s->sess.nid = known->nid;
	if (s->sess.cipher == KLOAK_CIPHER_AES_128_GCM || s->sess.cipher == KLOAK_CIPHER_AES_256_GCM)
		ct_derive_h(s, key, known ? known->key_len : 16);
	bpf_map_update_elem(&ct_sessions, &ssl_key, &s->sess, BPF_ANY);
	return 0;
}

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

/*
 * Subprograms, not inlined: their reads need stack of their own, which the
 * write path's frames (512 bytes for a chain of calls) cannot spare on 6.1.
 */
static __noinline bool netns_wired(__u32 inum)
{
	return inum && bpf_map_lookup_elem(&ct_wired, &inum);
}

static __noinline __u32 task_netns(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
}

static __noinline __u32 sock_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* KLOAK_REASON_NONE when placeholders of this object can be patched in its ciphertext. */
static __always_inline __u32 ct_session_reason(__u64 tls_ptr)
{
	struct kloak_conn_key key = conn_key(tls_ptr);
	struct kloak_ct_session *sess = bpf_map_lookup_elem(&ct_sessions, &key);

	if (!sess || sess->cipher == KLOAK_CIPHER_UNKNOWN)
		return KLOAK_REASON_CIPHER_STATE_UNKNOWN;
	if (sess->cipher == KLOAK_CIPHER_OTHER)
		return KLOAK_REASON_CIPHER_UNSUPPORTED;
	if (!netns_wired(task_netns()))
		return KLOAK_REASON_WIRE_UNAVAILABLE;
	return KLOAK_REASON_NONE;
}

/* ---- 2. queueing (called by the write hook) ---- */

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

/* The thread's pending write for tls_ptr, created empty when the call has none. */
static __always_inline struct kloak_ct_write *ct_write_for(__u32 tid, __u64 tls_ptr)
{
	struct kloak_ct_write *w = bpf_map_lookup_elem(&ct_writes, &tid);
	__u32 zero = 0;

	if (w && w->tls_ptr == tls_ptr)
		return w;
	w = bpf_map_lookup_elem(&ct_write_zero, &zero);
	if (!w || bpf_map_update_elem(&ct_writes, &tid, w, BPF_ANY))
		return NULL;
	w = bpf_map_lookup_elem(&ct_writes, &tid);
	if (w)
		w->tls_ptr = tls_ptr;
	return w;
}

/*
 * A TLS write begins on this thread: its socket writes are attributed and
 * bound to `call`, and a list a thread left behind (it never returned) is
 * not this write's.
 */
static __always_inline void tls_write_begin(__u32 tid, struct kloak_tls_call *call)
{
	bpf_map_update_elem(&tls_calls, &tid, call, BPF_ANY);
	bpf_map_delete_elem(&ct_writes, &tid);
}

/* ---- events of the later stages, which run outside the write hook ---- */

static __always_inline void ct_event(struct kloak_ct_write *w, struct kloak_ct_item *item, __u32 kind,
				     __u32 reason, struct peer *peer)
{
	struct kloak_event *e;

	if (kind == KLOAK_EVENT_TLS_BLOCKED)
		count_blocked(reason);
	e = event_reserve(kind, w->hook);
	if (!e)
		return;
	event_set_task(e, w->cgroup_id);
	e->reason = reason;
	e->secret_id = item->secret_id;
	e->offset = item->pt_off;
	e->fd = w->fd;
	e->strategy = KLOAK_STRATEGY_CIPHERTEXT;
	if (peer) {
		e->addr = peer->addr;
		e->port = peer->port;
		e->family = peer->family;
	}
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

struct done_loop {
	struct kloak_ct_write *w;
};

static long done_step(__u64 index, void *data)
{
	struct kloak_ct_write *w = ((struct done_loop *)data)->w;
	struct kloak_ct_item *item;

	if (index >= w->count || index >= KLOAK_CT_MAX_ITEMS)
		return 1;
	item = &w->items[index & (KLOAK_CT_MAX_ITEMS - 1)];
	if (item->bound == 0)
		ct_event(w, item, KLOAK_EVENT_TLS_BLOCKED, KLOAK_REASON_RECORD_NOT_SEEN, NULL);
	return 0;
}

/* The TLS call returned: whatever was not bound to the wire went out as the placeholder (S4). */
static __always_inline void ct_write_done(__u32 tid)
{
	struct done_loop loop = { .w = bpf_map_lookup_elem(&ct_writes, &tid) };

	if (!loop.w)
		return;
	/* A callback per item: 6.1 loses track of ring-buffer records reserved in an unrolled loop. */
	bpf_loop(KLOAK_CT_MAX_ITEMS, done_step, &loop, 0);
	bpf_map_delete_elem(&ct_writes, &tid);
}

/* ---- 3. binding records to sequence numbers ---- */

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

/* The connection's key as its outgoing packets carry it. */
static __always_inline bool flow_key_of(struct sock *sk, struct kloak_flow_key *key)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	__builtin_memset(key, 0, sizeof(*key));
	if (family == AF_INET) {
		addr_from_v4(&key->saddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		addr_from_v4(&key->daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&key->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&key->daddr, sk, __sk_common.skc_v6_daddr);
	} else {
		return false;
	}
	key->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	key->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return true;
}

static __always_inline struct kloak_ct_flow *flow_for(struct kloak_flow_key *key)
{
	struct kloak_ct_flow *flow = bpf_map_lookup_elem(&ct_flows, key);
	__u32 zero = 0;

	if (flow)
		return flow;
	flow = bpf_map_lookup_elem(&ct_flow_zero, &zero);
	if (!flow || bpf_map_update_elem(&ct_flows, key, flow, BPF_NOEXIST))
		return bpf_map_lookup_elem(&ct_flows, key);
	return bpf_map_lookup_elem(&ct_flows, key);
}

struct slot_loop {
	struct kloak_ct_flow *flow;
	struct ct_scratch *s;
};

static long slot_find_step(__u64 index, void *data)
{
	struct slot_loop *l = data;

	if (l->flow->patches[index & (KLOAK_CT_MAX_PATCHES - 1)].state != KLOAK_PATCH_FREE)
		return 0;
	l->s->slot = (__u32)index;
	return 1;
}

static long slot_count_step(__u64 index, void *data)
{
	struct slot_loop *l = data;

	if (l->flow->patches[index & (KLOAK_CT_MAX_PATCHES - 1)].state == KLOAK_PATCH_FREE)
		l->s->free += 1;
	return 0;
}

/*
 * A free slot, marked filling; the caller counted enough free ones first.
 * The index travels through map memory: one state for the verifier, not
 * one per slot it could be.
 */
static __always_inline struct kloak_ct_patch *take_slot(struct ct_scratch *s, struct kloak_ct_flow *flow)
{
	struct slot_loop l = { .flow = flow, .s = s };
	struct kloak_ct_patch *p;

	s->slot = KLOAK_CT_MAX_PATCHES;
	bpf_loop(KLOAK_CT_MAX_PATCHES, slot_find_step, &l, 0);
	if (s->slot >= KLOAK_CT_MAX_PATCHES)
		return NULL;
	p = &flow->patches[s->slot & (KLOAK_CT_MAX_PATCHES - 1)];
	if (p->state != KLOAK_PATCH_FREE)
		return NULL;
	p->state = KLOAK_PATCH_FILLING;
	return p;
}

/* Fields first, then LIVE: TC only reads live slots. */
static __always_inline void publish(struct kloak_ct_patch *p)
{
	barrier();
	p->state = KLOAK_PATCH_LIVE;
}

/*
 * Every stage below is a bpf_loop callback with its counters in map memory:
 * the verifier then checks each small body once, instead of every path
 * through records times placeholders.
 */
struct bind_ctx {
	struct ct_scratch *s;
	struct kloak_ct_write *w;
	struct kloak_ct_session *sess;
	struct kloak_ct_flow *flow;
	struct kloak_secret *secret;
	struct peer *peer;
	const __u8 *buf;
	__u32 len;
	__u32 seq0;
	__u32 refusal;                           /* refuse_step's reason */
};

/* The item stage callbacks return 1 (stop) on NULL, before any use. */
static __always_inline struct kloak_ct_item *item_at(struct kloak_ct_write *w, __u64 index)
{
	__u64 i = index;

	barrier_var(i);
	if (i >= w->count || i >= KLOAK_CT_MAX_ITEMS)
		return NULL;
	return &w->items[i & (KLOAK_CT_MAX_ITEMS - 1)];
}

/*
 * One TLS record header of this socket write. Only whole headers at the
 * expected places count: anything else stops the parse and leaves the
 * remaining placeholders unbound (S4).
 */
static long record_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct ct_record *rec = &s->recs[index & (KLOAK_CT_MAX_RECORDS - 1)];
	__u32 off = s->parse_off, pt = s->covered, explicit = b->sess->tls13 ? 0 : TLS12_EXPLICIT_NONCE;
	__u32 rec_len, ct_len, data_len;
	__u8 head[5];

	if (index >= KLOAK_CT_MAX_RECORDS || off + 5 > b->len || pt >= b->w->total ||
	    bpf_probe_read_user(head, 5, b->buf + off))
		return 1;
	rec_len = ((__u32)head[3] << 8) | head[4];
	if (head[0] != TLS_APPLICATION_DATA || head[1] != 3 || head[2] != 3 || rec_len > TLS_RECORD_MAX ||
	    rec_len < TLS_TAG_LEN + explicit + 1)
		return 1;
	ct_len = rec_len - TLS_TAG_LEN - explicit;
	/* TLS 1.3 appends the inner content type; OpenSSL and BoringSSL add no padding unless asked. */
	data_len = b->sess->tls13 ? ct_len - 1 : ct_len;
	if (pt + data_len > b->w->total)
		return 1;
	rec->body_seq = b->seq0 + off + 5 + explicit;
	rec->pt_start = pt;
	rec->data_len = data_len;
	rec->ct_len = ct_len;
	s->nrec = (__u32)index + 1;
	s->covered = pt + data_len;
	s->parse_off = off + 5 + rec_len;
	return 0;
}

/* A placeholder that continues past the parsed records cannot be bound whole: it fails now (S4). */
static long crossing_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct kloak_ct_item *item = item_at(b->w, index);
	__u32 covered = b->s->covered;

	if (!item)
		return 1;
	if (item->bound == 0 && item->pt_off < covered && item->pt_off + item->len > covered) {
		item->bound = item->len + 1;
		ct_event(b->w, item, KLOAK_EVENT_TLS_BLOCKED, KLOAK_REASON_RECORD_MISMATCH, NULL);
	}
	return 0;
}

/* Placeholder i lies whole in the parsed records and is not bound yet. */
static __always_inline bool bindable(struct ct_scratch *s, struct kloak_ct_item *item)
{
	return item->bound == 0 && item->pt_off + item->len <= s->covered && item->pt_off >= s->first_pt;
}

/* Patch slots the write needs: one per (placeholder, record) part, one per record's tag. */
static long need_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct ct_record *rec = &s->recs[(index >> 4) & (KLOAK_CT_MAX_RECORDS - 1)];
	struct kloak_ct_item *item;
	__u32 rs = rec->pt_start, re = rs + rec->data_len;

	if ((index >> 4) >= s->nrec)
		return 1;
	if ((index & 15) == 0)
		s->rec_parts = 0;
	item = item_at(b->w, index & 15);
	if (!item)
		return 0;
	if (bindable(s, item) && item->pt_off < re && item->pt_off + item->len > rs) {
		s->need += 1 + (s->rec_parts == 0);   /* the first part of a record brings its tag */
		s->rec_parts += 1;
	}
	return 0;
}

/* This write's records cannot carry item `index`: it leaves as written, for b->refusal. */
static long refuse_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct kloak_ct_item *item = item_at(b->w, index);

	if (!item)
		return 1;
	if (bindable(b->s, item)) {
		item->bound = item->len + 1;
		ct_event(b->w, item, KLOAK_EVENT_TLS_BLOCKED, b->refusal, NULL);
	}
	return 0;
}

static long dbuf_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct kloak_secret *secret = b->secret;
	struct ct_scratch *s = b->s;
	__u32 o = (s->from + (__u32)index) & (KLOAK_MAX_SECRET - 1);

	if (!secret)
		return 1;
	s->dbuf[(s->lead + (__u32)index) & (DBUF_SIZE - 1)] = secret->value[o] ^ secret->placeholder[o];
	return 0;
}

/* Placeholder `index`'s part in record s->rec: its patch, and its share of the tag difference. */
static long bind_item_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct kloak_ct_item *item = item_at(b->w, index);
	__u32 start, end, rs = s->rec.pt_start, re = s->rec.pt_start + s->rec.data_len, from, to;
	struct kloak_ct_patch *p;

	if (!item)
		return 1;
	start = item->pt_off;
	end = start + item->len;
	if (!bindable(s, item) && !(item->bound > 0 && item->bound < item->len))
		return 0;
	if (end <= rs || start >= re)
		return 0;
	from = start > rs ? start : rs;
	to = end < re ? end : re;
	b->secret = bpf_map_lookup_elem(&secrets, &item->key);
	if (!b->secret)
		return 0;                /* removed since the write: fail closed (its bytes stay out of the tag) */
	p = take_slot(s, b->flow);
	if (!p || s->nparts >= KLOAK_CT_MAX_ITEMS)
		return 0;
	p->seq = s->rec.body_seq + (from - rs);
	p->len = to - from;
	p->sent = 0;
	p->secret_off = from - start;
	p->use_delta = 0;
	p->key = item->key;
	p->value_id = b->secret->value_id;
	publish(p);
	s->parts[s->nparts & (KLOAK_CT_MAX_ITEMS - 1)] = (struct ct_part){
		.key = item->key,
		.value_id = b->secret->value_id,
		.slot = s->slot,
		.secret_off = from - start,
		.ct_start = from - rs,
		.ct_end = to - rs,
	};
	s->nparts += 1;
	item->bound += to - from;
	if (item->bound == item->len) {
		count(KLOAK_CTR_CT_BOUND);
		ct_event(b->w, item, KLOAK_EVENT_TLS_REWRITTEN, KLOAK_REASON_NONE, b->peer);
	}
	return 0;
}

/*
 * One patched part's share of the record's tag difference. Apart from the
 * placement (bind_item_step): the frames of this chain of callbacks must fit
 * 512 bytes together.
 */
static long tag_part_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct ct_part *part;

	if (index >= s->nparts || index >= KLOAK_CT_MAX_ITEMS)
		return 1;
	part = &s->parts[index & (KLOAK_CT_MAX_ITEMS - 1)];
	b->secret = secret_value(&part->key, part->value_id);
	if (!b->secret) {
		/* Removed since it was placed: withdraw the patch, the record stays whole (S4). */
		b->flow->patches[part->slot & (KLOAK_CT_MAX_PATCHES - 1)].state = KLOAK_PATCH_FREE;
		return 0;
	}
	s->from = part->secret_off;
	s->lead = part->ct_start & 15;
	dbuf_open(s);
	bpf_loop(part->ct_end - part->ct_start, dbuf_step, b, 0);
	dbuf_close(s, part->ct_start, part->ct_end - part->ct_start);
	tag_add_part(s, b->sess, part->ct_start, part->ct_end);
	return 0;
}

/* Every queued placeholder in record `index`, then the record's tag patch. */
static long bind_record_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct kloak_ct_patch *p;
	struct gf128 delta;

	if (index >= s->nrec || index >= KLOAK_CT_MAX_RECORDS)
		return 1;
	s->rec = s->recs[index & (KLOAK_CT_MAX_RECORDS - 1)];
	s->nparts = 0;
	bpf_loop(KLOAK_CT_MAX_ITEMS, bind_item_step, b, 0);
	tag_begin(s);
	bpf_loop(KLOAK_CT_MAX_ITEMS, tag_part_step, b, 0);
	if (!s->has)
		return 0;
	delta = tag_finish(s, b->sess, s->rec.ct_len);
	p = take_slot(s, b->flow);
	if (!p)
		return 0;
	p->seq = s->rec.body_seq + s->rec.ct_len;
	p->len = TLS_TAG_LEN;
	p->sent = 0;
	p->secret_off = 0;
	p->use_delta = 1;
	__builtin_memset(&p->key, 0, sizeof(p->key));
	gf128_store(p->delta, delta);
	publish(p);
	return 0;
}

/*
 * A socket write by a thread inside a TLS write call that queued
 * placeholders for the ciphertext strategy.
 */
static __always_inline void ct_on_socket_write(__u32 tid, __u64 tls_ptr, int fd, const __u8 *buf, __u32 len)
{
	struct kloak_ct_write *w = bpf_map_lookup_elem(&ct_writes, &tid);
	struct kloak_conn_key skey = conn_key(tls_ptr);
	struct bind_ctx b = { .w = w, .buf = buf, .len = len };
	struct slot_loop slots;
	struct sock *sk;

	if (!w || w->tls_ptr != tls_ptr || !w->count || w->fd != fd || !buf)
		return;
	b.sess = bpf_map_lookup_elem(&ct_sessions, &skey);
	b.s = ct_scratch();
	sk = tcp_sock_of_fd(fd);
	if (!b.sess || !b.s || !sk || !flow_key_of(sk, &b.s->fkey))
		return;
	b.seq0 = BPF_CORE_READ((struct tcp_sock *)sk, write_seq);
	b.s->nrec = 0;
	b.s->parse_off = 0;
	b.s->covered = w->pt_done;
	b.s->first_pt = w->pt_done;
	bpf_loop(KLOAK_CT_MAX_RECORDS, record_step, &b, 0);
	if (!b.s->nrec)
		return;
	bpf_loop(KLOAK_CT_MAX_ITEMS, crossing_step, &b, 0);
	/* The socket, not the thread, says where the packets go. */
	if (!netns_wired(sock_netns(sk))) {
		w->pt_done = b.s->covered;
		b.refusal = KLOAK_REASON_WIRE_UNAVAILABLE;
		bpf_loop(KLOAK_CT_MAX_ITEMS, refuse_step, &b, 0);
		return;
	}
	b.flow = flow_for(&b.s->fkey);
	if (!b.flow)
		return;
	b.s->need = 0;
	bpf_loop(KLOAK_CT_MAX_RECORDS * KLOAK_CT_MAX_ITEMS, need_step, &b, 0);
	slots.flow = b.flow;
	slots.s = b.s;
	b.s->free = 0;
	bpf_loop(KLOAK_CT_MAX_PATCHES, slot_count_step, &slots, 0);
	w->pt_done = b.s->covered;
	if (b.s->need > b.s->free) {
		b.refusal = KLOAK_REASON_PATCH_TABLE_FULL;
		bpf_loop(KLOAK_CT_MAX_ITEMS, refuse_step, &b, 0);
		return;
	}
	if (peer_of_fd(fd, &b.s->peer))
		b.peer = &b.s->peer;
	bpf_loop(KLOAK_CT_MAX_RECORDS, bind_record_step, &b, 0);
}

/* ---- load-time self-test of the arithmetic above (dataplane::gcm) ---- */

SEC("syscall")
int handle_gcm_selftest(struct kloak_gcm_selftest *t)
{
	struct ct_scratch *s = ct_scratch();
	struct gf128 r;

	if (!s)
		return 0;
	t->result = 1;
	if (t->op == KLOAK_GCM_AES_BLOCK) {
		if (t->key_len != 16 && t->key_len != 32)
			return 0;
		__builtin_memcpy(s->aes.key, t->key, 32);
		__builtin_memcpy(s->aes.state, t->x, 16);
		aes_encrypt_block(&s->aes, t->key_len);
		__builtin_memcpy(t->out, s->aes.state, 16);
	} else if (t->op == KLOAK_GCM_MUL) {
		r = gf128_mul(&s->mul, gf128_load(t->x), gf128_load(t->y));
		gf128_store(t->out, r);
	} else if (t->op == KLOAK_GCM_TAG_DELTA) {
		__u32 n = t->delta_len, off = t->delta_off;

		if (n == 0 || n > sizeof(t->delta) || off + n > t->ct_len || t->ct_len > GHASH_BLOCKS_MAX * 16)
			return 0;
		__builtin_memcpy(s->sess.h, t->x, 16);
		ct_session_powers(&s->mul, &s->sess);
		/* A program's context only allows loads at constant offsets. */
		if (bpf_probe_read_kernel(s->selftest_delta, sizeof(s->selftest_delta), t->delta))
			return 0;
		dbuf_open(s);
		for (__u32 i = 0; i < sizeof(s->selftest_delta); i++)
			s->dbuf[((off & 15) + i) & (DBUF_SIZE - 1)] = s->selftest_delta[i];
		dbuf_close(s, off, n);
		tag_begin(s);
		tag_add_part(s, &s->sess, off, off + n);
		r = tag_finish(s, &s->sess, t->ct_len);
		gf128_store(t->out, r);
	} else {
		return 0;
	}
	t->result = 0;
	return 0;
}

#endif
