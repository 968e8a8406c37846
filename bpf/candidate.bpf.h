/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * One candidate placeholder in a TLS write, found in plain text: the scan
 * for "kloak:", the full comparison against the user's own buffer (S7), the
 * decision by binding, connection, port, host and server name (S2, S3, S6),
 * the strategy (in place, or queued for the ciphertext strategy), the
 * rewrite in place and the record of where, for the write-back (S5).
 * hpack.bpf.h decides Huffman-coded candidates with the same code;
 * rewrite.bpf.h runs both.
 */
#ifndef KLOAK_CANDIDATE_BPF_H
#define KLOAK_CANDIDATE_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "rewrite_maps.h"
#include "common.bpf.h"
#include "events.bpf.h"
#include "sock.bpf.h"
#include "cipher_keys.bpf.h"
#include "cipher_bind.bpf.h"

#define K8 0x6b6b6b6b6b6b6b6bULL     /* "kkkkkkkk" */
#define LOW_BITS 0x0101010101010101ULL
#define HIGH_BITS 0x8080808080808080ULL
#define CMP_CHUNK 64
#define SCAN_BLOCK 64

struct write_ctx {
	__u64 buf;                       /* user address of the plaintext */
	__u32 len;                       /* bytes scanned (<= KLOAK_SCAN_MAX) */
	__u32 total;                     /* bytes in the write */
	__u64 cgroup_id;
	__u64 now;
	__u32 hook;
	__s32 fd;                        /* socket the object writes to, -1 unknown */
	__u32 peer_state;                /* 1 known, 2 unknown (read before any decision) */
	__u32 next_free;                 /* candidates before this lie inside a match */
	__u32 block;                     /* scan: offset of the block being searched */
	__u64 tls_ptr;                   /* SSL* or *tls.Conn: the conns key */
	struct peer peer;
	struct kloak_conn *conn;
	struct scan_scratch *scratch;
	struct kloak_restore_key rkey;
	/* full comparison state */
	struct kloak_secret *secret;
	__u64 cmp_addr;
	__u32 cmp_equal;
};

static __always_inline struct write_ctx *ctx_of(void *data)
{
	return data;
}

/* Records a candidate at every "kloak:" that starts in the word at off. */
static __always_inline void scan_word(struct write_ctx *c, struct scan_scratch *s, __u32 off, __u64 hit)
{
	for (__u32 b = 0; b < 8; b++) {
		__u32 p = (off + b) & (KLOAK_SCAN_MAX - 1);
		__u8 *at = &s->buf[p];
		__u32 n;

		if (!(hit & (0x80ULL << (b * 8))))
			continue;
		if (off + b + KLOAK_PREFIX_LEN > c->len)
			break;
		if (at[0] != 'k' || at[1] != 'l' || at[2] != 'o' || at[3] != 'a' || at[4] != 'k' || at[5] != ':')
			continue;
		n = s->count;
		if (n < KLOAK_MAX_MATCHES)
			s->cand[n] = p;
		s->count = n + 1;
	}
}

/* The slow path of a block: one of its words holds a 'k'. */
static long word_step(__u64 index, void *data)
{
	struct write_ctx *c = ctx_of(data);
	struct scan_scratch *s = c->scratch;
	__u32 off = (c->block + (__u32)index * 8) & (KLOAK_SCAN_MAX - 8);
	__u64 x, hit;

	if (!s || index >= SCAN_BLOCK / 8)
		return 1;
	x = *(__u64 *)&s->buf[off] ^ K8;
	hit = (x - LOW_BITS) & ~x & HIGH_BITS;
	if (hit)
		scan_word(c, s, off, hit);
	return 0;
}

/*
 * One 64-byte block of the scan: any 'k' may start "kloak:". The eight words
 * are tested without branches, so the common block (no 'k') costs one
 * callback and one comparison.
 */
static long scan_step(__u64 index, void *data)
{
	struct write_ctx *c = ctx_of(data);
	struct scan_scratch *s = c->scratch;
	__u32 base = ((__u32)index * SCAN_BLOCK) & (KLOAK_SCAN_MAX - SCAN_BLOCK);
	__u64 any = 0;

	if (!s || (__u32)index * SCAN_BLOCK >= c->len)
		return 1;
	for (__u32 w = 0; w < SCAN_BLOCK / 8; w++) {
		__u64 x = *(__u64 *)&s->buf[base + w * 8] ^ K8;

		any |= (x - LOW_BITS) & ~x & HIGH_BITS;
	}
	if (any) {
		c->block = base;
		bpf_loop(SCAN_BLOCK / 8, word_step, c, 0);
	}
	return 0;
}

/*
 * The first n (1..64) bytes of a and b are equal. Word by word without
 * branches: a branch per byte would make the verifier walk every outcome.
 */
static __always_inline bool words_equal(const __u8 *a, const __u8 *b, __u32 n)
{
	__u64 diff = 0;

	for (__u32 w = 0; w < CMP_CHUNK / 8; w++) {
		__u32 left = n > w * 8 ? n - w * 8 : 0;
		__u64 mask = left >= 8 ? ~0ULL : (1ULL << ((left & 7) * 8)) - 1;

		diff |= (*(const __u64 *)&a[w * 8] ^ *(const __u64 *)&b[w * 8]) & mask;
	}
	return diff == 0;
}

/* Compares one chunk of the user's buffer with the secret's placeholder. */
static long cmp_step(__u64 index, void *data)
{
	struct write_ctx *c = ctx_of(data);
	struct kloak_secret *secret = c->secret;
	struct scan_scratch *s = c->scratch;
	__u32 off = (__u32)index * CMP_CHUNK, n;

	if (!secret || !s || off >= secret->len || off >= KLOAK_MAX_SECRET)
		return 1;
	n = secret->len - off;
	if (n > CMP_CHUNK)
		n = CMP_CHUNK;
	barrier_var(n);
	n &= CMP_CHUNK * 2 - 1;
	if (n == 0 || n > CMP_CHUNK)
		return 1;
	if (bpf_probe_read_user(s->chunk, n, (void *)(c->cmp_addr + off))) {
		c->cmp_equal = 0;
		return 1;
	}
	if (!words_equal(s->chunk, &secret->placeholder[off & (KLOAK_MAX_SECRET - CMP_CHUNK)], n)) {
		c->cmp_equal = 0;
		return 1;
	}
	return 0;
}

/* S7: the whole placeholder, as it is in user memory now. */
static __always_inline bool placeholder_equal(struct write_ctx *c, struct kloak_secret *secret, __u64 addr)
{
	c->secret = secret;
	c->cmp_addr = addr;
	c->cmp_equal = 1;
	bpf_loop((KLOAK_MAX_SECRET + CMP_CHUNK - 1) / CMP_CHUNK, cmp_step, c, 0);
	return c->cmp_equal;
}

/*
 * The secret whose placeholder starts with the n bytes in raw. Keys are the
 * first 16 bytes, zero padded when shorter, so a 12..16 byte prefix is tried
 * from the longest; the masks keep the construction branch-free for the
 * verifier.
 */
static __always_inline struct kloak_secret *secret_by_prefix(__u64 raw[2], __u32 n, struct kloak_secret_key *key)
{
	for (__u32 k = KLOAK_KEY_LEN; k >= KLOAK_MIN_SECRET; k--) {
		struct kloak_secret *secret;
		__u64 high_mask = k >= 16 ? ~0ULL : (1ULL << ((k - 8) * 8)) - 1;
		__u64 words[2] = { raw[0], raw[1] & high_mask };

		if (k > n)
			continue;
		__builtin_memcpy(key->bytes, words, sizeof(words));
		secret = bpf_map_lookup_elem(&secrets, key);
		if (secret)
			return secret;
	}
	return NULL;
}

/* The secret of a plain-text placeholder at addr. */
static __always_inline struct kloak_secret *secret_at(__u64 addr, __u32 avail, struct kloak_secret_key *key)
{
	__u64 raw[2] = {};
	__u32 n = avail < KLOAK_KEY_LEN ? avail : KLOAK_KEY_LEN;

	barrier_var(n);
	n &= KLOAK_KEY_LEN * 2 - 1;
	if (n < KLOAK_MIN_SECRET || n > KLOAK_KEY_LEN || bpf_probe_read_user(raw, n, (void *)addr))
		return NULL;
	return secret_by_prefix(raw, n, key);
}

static __always_inline void resolve_peer(struct write_ctx *c)
{
	if (c->peer_state)
		return;
	c->peer_state = (c->fd >= 0 && peer_of_fd(c->fd, &c->peer)) ? 1 : 2;
}

static __always_inline bool sni_allows(struct kloak_conn *conn, __u32 host_id)
{
	if (!conn || !(conn->flags & KLOAK_CONN_HAS_SNI))
		return true;
	for (__u32 i = 0; i < KLOAK_MAX_HOSTS; i++) {
		if (i >= conn->sni_host_count)
			break;
		if (conn->sni_host_ids[i & (KLOAK_MAX_HOSTS - 1)] == host_id)
			return true;
	}
	return false;
}

struct host_loop {
	struct write_ctx *c;
	struct kloak_secret *secret;
	__u32 reason;
	__u32 allowed;
};

/* One allowed host of the secret: is the peer verified for it, and still? */
static long host_step(__u64 index, void *data)
{
	struct host_loop *h = data;
	struct write_ctx *c = h->c;
	struct kloak_verified_key vkey = {};
	struct kloak_verified *v;
	__u32 i = (__u32)index;

	if (i >= h->secret->host_count || i >= KLOAK_MAX_HOSTS)
		return 1;
	vkey.addr = c->peer.addr;
	vkey.host_id = h->secret->host_ids[i & (KLOAK_MAX_HOSTS - 1)];
	v = bpf_map_lookup_elem(&verified, &vkey);
	if (!v)
		return 0;
	if (v->expires_ns <= c->now) {
		h->reason = KLOAK_REASON_DNS_EXPIRED;
		return 0;
	}
	if (!sni_allows(c->conn, vkey.host_id)) {
		h->reason = KLOAK_REASON_SNI_MISMATCH;
		return 0;
	}
	h->allowed = 1;
	return 1;
}

/* KLOAK_REASON_NONE when this secret may go to this connection from this cgroup. */
static __always_inline __u32 policy_check(struct write_ctx *c, struct kloak_secret *secret)
{
	struct kloak_binding_key binding = { .cgroup_id = c->cgroup_id, .secret_id = secret->id };
	struct host_loop h = { .c = c, .secret = secret, .reason = KLOAK_REASON_HOST_NOT_ALLOWED };

	if (!bpf_map_lookup_elem(&bindings, &binding))
		return KLOAK_REASON_NOT_BOUND;
	if ((secret->flags & KLOAK_SECRET_ANY_HOST) && secret->port == 0)
		return KLOAK_REASON_NONE;
	if (c->peer_state != 1)
		return KLOAK_REASON_UNVERIFIED_CONNECTION;
	if (secret->port && secret->port != c->peer.port)
		return KLOAK_REASON_PORT_MISMATCH;
	if (secret->flags & KLOAK_SECRET_ANY_HOST)
		return KLOAK_REASON_NONE;
	bpf_loop(KLOAK_MAX_HOSTS, host_step, &h, 0);
	return h.allowed ? KLOAK_REASON_NONE : h.reason;
}

/* encoding is a constant at every call: a value carried in write_ctx would keep the verifier from pruning. */
static __always_inline void tls_event(struct write_ctx *c, __u32 kind, __u32 reason,
				      struct kloak_secret *secret, __u32 offset, __u32 encoding)
{
	struct kloak_event *e = event_reserve(kind, c->hook);

	if (!e)
		return;
	event_set_task(e, c->cgroup_id);
	e->reason = reason;
	e->secret_id = secret ? secret->id : 0;
	e->offset = offset;
	e->encoding = encoding;
	e->strategy = kind == KLOAK_EVENT_TLS_REWRITTEN ? KLOAK_STRATEGY_IN_PLACE : 0;
	e->fd = c->fd;
	if (c->peer_state == 1)
		event_set_peer(e, c->peer);
	event_submit(e);
}

static __always_inline void blocked_as(struct write_ctx *c, __u32 reason, struct kloak_secret *secret,
				       __u32 offset, __u32 encoding)
{
	count_blocked(reason);
	tls_event(c, KLOAK_EVENT_TLS_BLOCKED, reason, secret, offset, encoding);
}

static __always_inline void blocked(struct write_ctx *c, __u32 reason, struct kloak_secret *secret, __u32 offset)
{
	blocked_as(c, reason, secret, offset, KLOAK_ENC_PLAIN);
}

/*
 * Every TLS write starts without a restore list, before any early return (a
 * zero-length write's return probe restores too). A list still there belongs
 * to a call that never returned (a killed thread, a missed return probe, a
 * reused goroutine): its addresses may hold anything by now, so it is dropped,
 * never written back. Writes only go back to the call that recorded them.
 */
static __always_inline void restore_begin(struct kloak_restore_key *key)
{
	struct kloak_restore *stale = bpf_map_lookup_elem(&restores, key);

	if (!stale)
		return;
	if (stale->count)
		count(KLOAK_CTR_RESTORE_STALE);
	bpf_map_delete_elem(&restores, key);
}

/* This call's restore list, created empty on first use. */
static __always_inline struct kloak_restore *restore_list(struct write_ctx *c)
{
	struct kloak_restore *list = bpf_map_lookup_elem(&restores, &c->rkey);
	__u32 zero = 0;

	if (list)
		return list;
	list = bpf_map_lookup_elem(&restore_zero, &zero);
	if (!list || bpf_map_update_elem(&restores, &c->rkey, list, BPF_NOEXIST))
		return NULL;
	list = bpf_map_lookup_elem(&restores, &c->rkey);
	if (list)
		list->count = 0;
	return list;
}

/* Where the placeholder must go back after the call (S5); every field is set. */
static __always_inline void remember_rewrite(struct kloak_restore *list, __u64 addr, struct kloak_secret_key *key,
					     __u32 encoding, __u32 shift)
{
	__u32 n = list->count;

	if (n >= KLOAK_MAX_MATCHES)
		return;
	list->entries[n].addr = addr;
	list->entries[n].key = *key;
	list->entries[n].encoding = encoding;
	list->entries[n].shift = shift;
	list->count = n + 1;
}

/*
 * How an allowed placeholder reaches the wire (KLOAK_STRATEGY_IN_PLACE or
 * _CIPHERTEXT), or 0 and why it cannot. `patchable`: its bytes are a fixed
 * function of the secret (plain text), as ciphertext patches need.
 */
static __always_inline __u32 choose_strategy(struct write_ctx *c, const bool can_write, const bool patchable,
					     __u32 *reason)
{
	__u32 ct = KLOAK_REASON_REWRITE_UNAVAILABLE;

	if (cfg_strategy != KLOAK_STRATEGY_IN_PLACE) {
		ct = ct_session_reason(c->tls_ptr);
		if (ct == KLOAK_REASON_NONE) {
			if (patchable)
				return KLOAK_STRATEGY_CIPHERTEXT;
			ct = KLOAK_REASON_ENCODING_UNSUPPORTED;
		}
	}
	if (cfg_strategy != KLOAK_STRATEGY_CIPHERTEXT && can_write)
		return KLOAK_STRATEGY_IN_PLACE;
	*reason = ct;
	return 0;
}

/* Queues an allowed placeholder for the records this write produces (cipher_bind.bpf.h). */
static __always_inline void ct_queue(struct write_ctx *c, struct kloak_secret *secret,
				     struct kloak_secret_key *key, __u32 p)
{
	struct kloak_ct_write *w = ct_write_for((__u32)bpf_get_current_pid_tgid(), c->tls_ptr);
	struct kloak_ct_item *item;
	__u32 n;

	if (!w) {
		blocked(c, KLOAK_REASON_PATCH_TABLE_FULL, secret, p);
		return;
	}
	n = w->count;
	if (n >= KLOAK_CT_MAX_ITEMS) {
		blocked(c, KLOAK_REASON_TOO_MANY_PLACEHOLDERS, secret, p);
		return;
	}
	w->fd = c->fd;
	w->total = c->total;
	w->cgroup_id = c->cgroup_id;
	w->hook = c->hook;
	item = &w->items[n & (KLOAK_CT_MAX_ITEMS - 1)];
	item->key = *key;
	item->secret_id = secret->id;
	item->pt_off = p;
	item->len = secret->len;
	item->bound = 0;
	w->count = n + 1;
}

/* One "kloak:" at offset p: decide and, in the rw build, rewrite. */
static __always_inline void handle_candidate(struct write_ctx *c, __u32 p, const bool can_write)
{
	struct kloak_secret_key key;
	struct kloak_secret *secret;
	struct kloak_restore *list;
	__u64 addr = c->buf + p;
	__u32 avail = c->total - p, len, reason;

	count(KLOAK_CTR_CANDIDATES);
	secret = secret_at(addr, avail, &key);
	if (!secret) {
		if (avail < KLOAK_MIN_SECRET)
			blocked(c, KLOAK_REASON_SPLIT_PLACEHOLDER, NULL, p);
		return;
	}
	len = secret->len;
	if (len > avail) {
		blocked(c, KLOAK_REASON_SPLIT_PLACEHOLDER, secret, p);
		return;
	}
	if (len < KLOAK_MIN_SECRET || len > KLOAK_MAX_SECRET || !placeholder_equal(c, secret, addr))
		return;
	count(KLOAK_CTR_MATCHES);
	c->next_free = p + len;
	reason = policy_check(c, secret);
	if (reason != KLOAK_REASON_NONE) {
		blocked(c, reason, secret, p);
		return;
	}
	switch (choose_strategy(c, can_write, true, &reason)) {
	case KLOAK_STRATEGY_CIPHERTEXT:
		ct_queue(c, secret, &key, p);
		return;
	case KLOAK_STRATEGY_IN_PLACE:
		break;
	default:
		blocked(c, reason, secret, p);
		return;
	}
	list = restore_list(c);
	if (!list || list->count >= KLOAK_MAX_MATCHES) {
		blocked(c, KLOAK_REASON_TOO_MANY_PLACEHOLDERS, secret, p);
		return;
	}
	/*
	 * Writing the placeholder over itself first proves every page of the
	 * range writable, so the real value is then written whole or not at all
	 * (S4: never a partial secret).
	 */
	barrier_var(len);
	len &= KLOAK_MAX_SECRET * 2 - 1;
	if (len < KLOAK_MIN_SECRET || len > KLOAK_MAX_SECRET)
		return;
	if (bpf_probe_write_user((void *)addr, secret->placeholder, len) ||
	    bpf_probe_write_user((void *)addr, secret->value, len)) {
		bpf_probe_write_user((void *)addr, secret->placeholder, len);
		blocked(c, KLOAK_REASON_WRITE_REFUSED, secret, p);
		return;
	}
	remember_rewrite(list, addr, &key, KLOAK_ENC_PLAIN, 0);
	count(KLOAK_CTR_REWRITTEN);
	tls_event(c, KLOAK_EVENT_TLS_REWRITTEN, KLOAK_REASON_NONE, secret, p, KLOAK_ENC_PLAIN);
}

#define DEFINE_CANDIDATE_STEP(name, can_write)                                   \
	static long name(__u64 index, void *data)                                \
	{                                                                        \
		struct write_ctx *c = ctx_of(data);                              \
		struct scan_scratch *s = c->scratch;                             \
		__u64 i = index;                                                 \
		__u32 p;                                                         \
                                                                                 \
		barrier_var(i);                                                  \
		if (!s || i >= s->count || i >= KLOAK_MAX_MATCHES)               \
			return 1;                                                \
		p = s->cand[i];                                                  \
		if (p >= c->len || p < c->next_free)                             \
			return 0;                                                \
		handle_candidate(c, p, can_write);                               \
		return 0;                                                        \
	}

DEFINE_CANDIDATE_STEP(candidate_step_rw, true)
DEFINE_CANDIDATE_STEP(candidate_step_ro, false)

#endif
