/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * HTTP/2 header values are HPACK-coded, usually with the Huffman code (RFC
 * 7541): a placeholder is then a run of bits that may start at any bit of a
 * byte. Placeholders cost exactly as many Huffman bits as their real values,
 * so the value's bits replace the placeholder's in place and every other bit
 * of the frame stays as it was.
 *
 * Only connections that sent the HTTP/2 client preface are searched, and
 * only inside header-bearing frames (HEADERS, CONTINUATION, PUSH_PROMISE),
 * tracked across writes; DATA frames are skipped (a placeholder in a body is
 * plain text, found by the plain scan). Part of the write path: decided by
 * candidate.bpf.h's code, run by rewrite.bpf.h.
 */
#ifndef KLOAK_HPACK_BPF_H
#define KLOAK_HPACK_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "rewrite_maps.h"
#include "common.bpf.h"
#include "candidate.bpf.h"
#include "hpack_tables.h"

#define H2_PREFACE_LEN 24
#define H2_FRAME_HEADER 9
#define H2_HEADERS 1
#define H2_PUSH_PROMISE 5
#define H2_CONTINUATION 9
/* Every frame of a 16 KiB write, even if all of them were empty. */
#define H2_MAX_FRAMES (KLOAK_SCAN_MAX / H2_FRAME_HEADER + 2)
#define HUFF_CHUNK 64
/*
 * Twelve characters of at least five bits: a coded placeholder is never
 * shorter. Checking against it (not against zero) gives older verifiers the
 * lower bound a write size needs.
 */
#define HUFF_MIN_BYTES 7

/* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" as three little-endian words. */
#define H2_PREFACE_0 0x5448202a20495250ULL
#define H2_PREFACE_1 0x0a0d302e322f5054ULL
#define H2_PREFACE_2 0x0a0d0a0d4d530a0dULL

static __always_inline bool starts_with_preface(struct write_ctx *c)
{
	struct scan_scratch *s = c->scratch;

	return s && c->len >= H2_PREFACE_LEN && *(__u64 *)&s->buf[0] == H2_PREFACE_0 &&
	       *(__u64 *)&s->buf[8] == H2_PREFACE_1 && *(__u64 *)&s->buf[16] == H2_PREFACE_2;
}

/*
 * A Huffman-coded "kloak:" whose second byte is at q, shifted by `shift`
 * bits: the 37 prefix bits compared at once, in a big-endian window.
 */
static long huff_prefix_step(__u64 index, void *data)
{
	struct write_ctx *c = ctx_of(data);
	struct scan_scratch *s = c->scratch;
	__u32 q = s->huff_block + (__u32)index, p = q - 1, shift, n;
	__u64 window;

	if (!s || index >= 8 || q >= s->huff_to)
		return 1;
	shift = hpack_prefix_second[s->buf[q & (KLOAK_SCAN_MAX - 1)]];
	if (!shift || q <= s->huff_from)
		return 0;
	shift -= 1;
	if ((__u64)p * 8 + shift + HPACK_PREFIX_BITS > (__u64)c->len * 8)
		return 0;
	window = __builtin_bswap64(*(__u64 *)&s->buf[p & (KLOAK_SCAN_MAX - 1)]);
	if (((window << (shift & 7)) >> (64 - HPACK_PREFIX_BITS)) != HPACK_PREFIX_CODE)
		return 0;
	n = s->huff_count;
	if (n < KLOAK_MAX_MATCHES)
		s->huff_cand[n] = p << 3 | shift;
	s->huff_count = n + 1;
	return 0;
}

/* Eight bytes of a header block: table lookups without branches, the slow path only on a hit. */
static long huff_scan_step(__u64 index, void *data)
{
	struct write_ctx *c = ctx_of(data);
	struct scan_scratch *s = c->scratch;
	__u32 base = s->huff_from + (__u32)index * 8;
	__u8 any = 0;

	if (!s || base >= s->huff_to)
		return 1;
	for (__u32 j = 0; j < 8; j++)
		any |= hpack_prefix_second[s->buf[(base + j) & (KLOAK_SCAN_MAX - 1)]];
	if (any) {
		s->huff_block = base;
		bpf_loop(8, huff_prefix_step, c, 0);
	}
	return 0;
}

static __always_inline bool carries_headers(__u8 type)
{
	return type == H2_HEADERS || type == H2_CONTINUATION || type == H2_PUSH_PROMISE;
}

/* One frame (or the rest of one) of an HTTP/2 write. */
static long h2_frame_step(__u64 index, void *data)
{
	struct write_ctx *c = ctx_of(data);
	struct kloak_conn *conn = c->conn;
	struct scan_scratch *s = c->scratch;
	__u32 off, avail, take, have, need;

	if (!conn || !s)
		return 1;
	off = s->h2_off;
	if (off >= c->total)
		return 1;
	avail = c->total - off;
	if (conn->h2_frame_left) {
		take = conn->h2_frame_left < avail ? conn->h2_frame_left : avail;
		if (carries_headers(conn->h2_frame_type) && off < c->len) {
			s->huff_from = off;
			s->huff_to = off + take < c->len ? off + take : c->len;
			bpf_loop((s->huff_to - off + 7) / 8, huff_scan_step, c, 0);
		}
		conn->h2_frame_left -= take;
		s->h2_off = off + take;
		return 0;
	}
	/* A frame header, or the rest of one that the previous write cut. */
	have = conn->h2_head_len;
	if (have >= H2_FRAME_HEADER) {
		conn->h2_head_len = 0;
		return 1;
	}
	need = H2_FRAME_HEADER - have;
	if (need > avail)
		need = avail;
	barrier_var(need);
	need &= 15;
	if (need == 0 || need > H2_FRAME_HEADER ||
	    bpf_probe_read_user(&conn->h2_head[have & 15], need, (void *)(c->buf + off)))
		return 1;
	conn->h2_head_len = have + need;
	s->h2_off = off + need;
	if (have + need < H2_FRAME_HEADER)
		return 1;
	conn->h2_frame_left = (__u32)conn->h2_head[0] << 16 | (__u32)conn->h2_head[1] << 8 | conn->h2_head[2];
	conn->h2_frame_type = conn->h2_head[3];
	conn->h2_head_len = 0;
	return 0;
}

/* The connection's record, created for a TLS object seen for the first time. */
static __always_inline struct kloak_conn *conn_for_h2(struct write_ctx *c)
{
	struct kloak_conn_key key = conn_key(c->tls_ptr);
	struct kloak_conn *conn;
	__u32 zero = 0;

	if (c->conn)
		return c->conn;
	conn = bpf_map_lookup_elem(&conn_zero, &zero);
	if (!c->tls_ptr || !conn)
		return NULL;
	bpf_map_update_elem(&conns, &key, conn, BPF_NOEXIST);
	conn = bpf_map_lookup_elem(&conns, &key);
	if (conn && !(conn->flags & KLOAK_CONN_HAS_FD))
		conn->fd = -1;
	return conn;
}

/*
 * Walks the HTTP/2 frames of this write and collects Huffman candidates in
 * header blocks. A write that starts with the client preface makes the
 * connection HTTP/2.
 */
static __always_inline void h2_collect(struct write_ctx *c)
{
	struct kloak_conn *conn = c->conn;
	struct scan_scratch *s = c->scratch;

	if (!s)
		return;
	s->h2_off = 0;
	if (!conn || !(conn->flags & KLOAK_CONN_HTTP2)) {
		if (!starts_with_preface(c))
			return;
		conn = conn_for_h2(c);
		if (!conn)
			return;
		c->conn = conn;
		conn->flags |= KLOAK_CONN_HTTP2;
		conn->h2_frame_left = 0;
		conn->h2_head_len = 0;
		s->h2_off = H2_PREFACE_LEN;
	}
	bpf_loop(H2_MAX_FRAMES, h2_frame_step, c, 0);
}

static __always_inline struct huff_scratch *huff_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&huff_buf, &zero);
}

/* Decodes the first characters of a candidate (state in struct huff_scratch). */
static long huff_decode_step(__u64 index, void *data)
{
	struct write_ctx *c = ctx_of(data);
	struct huff_scratch *hs = huff_scratch();
	struct scan_scratch *s = c->scratch;
	__u64 bit, end = (__u64)c->len * 8;
	__u32 i, window;
	__u16 entry;
	__u8 len;

	if (!s || !hs || index >= KLOAK_KEY_LEN)
		return 1;
	bit = hs->bit;
	if (bit >= end) {
		hs->ended = 1;
		return 1;
	}
	i = (__u32)(bit >> 3);
	window = (__u32)s->buf[i & (KLOAK_SCAN_MAX - 1)] << 8;
	if (i + 1 < c->len)
		window |= s->buf[(i + 1) & (KLOAK_SCAN_MAX - 1)];
	entry = hpack_decode8[((window << (bit & 7)) >> 8) & 0xff];
	len = entry & 0xff;
	if (len == 0)
		return 1;                /* a code longer than 8 bits: no placeholder character */
	if (bit + len > end) {
		hs->ended = 1;
		return 1;
	}
	hs->chars[index & (KLOAK_KEY_LEN - 1)] = entry >> 8;
	hs->count = index + 1;
	hs->bit = bit + len;
	return 0;
}

/* One character of the placeholder (or of the value, hs->value) into hs->out. */
static long huff_encode_step(__u64 index, void *data)
{
	struct kloak_secret *secret = *(struct kloak_secret **)data;
	struct huff_scratch *hs = huff_scratch();
	__u32 i = (__u32)index, code, len, pending;
	__u64 acc;
	__u8 ch;

	if (!secret || !hs || i >= secret->len || i >= KLOAK_MAX_SECRET)
		return 1;
	ch = hs->value ? secret->value[i & (KLOAK_MAX_SECRET - 1)] : secret->placeholder[i & (KLOAK_MAX_SECRET - 1)];
	code = hpack_code[ch];
	len = hpack_len[ch] & 31;
	acc = (hs->acc << len) | code;
	pending = (hs->pending & 7) + len;
	hs->bits += len;
	for (__u32 k = 0; k < 5; k++) {
		if (pending < 8)
			break;
		pending -= 8;
		hs->out[hs->out_len & (HUFF_BUF - 1)] = (__u8)(acc >> (pending & 63));
		hs->out_len++;
	}
	hs->pending = pending;
	hs->acc = acc & ((1ULL << (pending & 7)) - 1);
	return 0;
}

/*
 * The placeholder's (or value's) bits, starting `shift` bits into user[0],
 * with the user's own bits kept before and after. Returns the byte count, 0
 * when it does not fit.
 */
static __always_inline __u32 huff_encode(struct huff_scratch *hs, struct kloak_secret *secret, __u32 value,
					  __u32 shift)
{
	__u32 last, pending, out;
	__u8 keep;

	if (!hs || !secret)
		return 0;
	shift &= 7;
	hs->value = value;
	hs->acc = shift ? hs->user[0] >> (8 - shift) : 0;
	hs->pending = shift;
	hs->out_len = 0;
	hs->bits = 0;
	bpf_loop(KLOAK_MAX_SECRET, huff_encode_step, &secret, 0);
	out = hs->out_len;
	pending = hs->pending & 7;
	if (out >= HUFF_BUF - 1)
		return 0;
	if (pending == 0)
		return out;
	last = out & (HUFF_BUF - 1);
	keep = hs->user[last] & ((1 << (8 - pending)) - 1);
	hs->out[last] = (__u8)(hs->acc << (8 - pending)) | keep;
	return out + 1;
}

struct huff_compare {
	struct huff_scratch *hs;
	__u32 len;
	__u32 equal;
};

static long huff_compare_step(__u64 index, void *data)
{
	struct huff_compare *m = data;
	__u32 base = (__u32)index * HUFF_CHUNK;

	if (!m->hs || base >= m->len)
		return 1;
	if (!words_equal(&m->hs->out[base & (HUFF_BUF - HUFF_CHUNK)], &m->hs->user[base & (HUFF_BUF - HUFF_CHUNK)],
			 m->len - base)) {
		m->equal = 0;
		return 1;
	}
	return 0;
}

static __always_inline bool huff_equal(struct huff_scratch *hs, __u32 len)
{
	struct huff_compare m = { .hs = hs, .len = len, .equal = 1 };

	bpf_loop(HUFF_BUF / HUFF_CHUNK, huff_compare_step, &m, 0);
	return m.equal;
}

/* One Huffman-coded "kloak:" at bit `shift` of byte p: decide and, in the rw build, rewrite. */
static __always_inline void handle_huff_candidate(struct write_ctx *c, __u32 p, __u32 shift, const bool can_write)
{
	struct huff_scratch *hs = huff_scratch();
	struct scan_scratch *s = c->scratch;
	struct kloak_secret_key key;
	struct kloak_secret *secret;
	struct kloak_restore *list;
	__u64 addr = c->buf + p, start = (__u64)p * 8 + shift;
	__u32 avail = c->total - p, n, placeholder_bits, reason;

	if (!hs || !s || start < s->huff_next_free)
		return;
	count(KLOAK_CTR_CANDIDATES);
	hs->bit = start;
	hs->count = 0;
	hs->ended = 0;
	__builtin_memset(hs->chars, 0, sizeof(hs->chars));
	bpf_loop(KLOAK_KEY_LEN, huff_decode_step, c, 0);
	secret = secret_by_prefix((__u64 *)hs->chars, hs->count, &key);
	if (!secret) {
		if (hs->ended)
			blocked_as(c, KLOAK_REASON_SPLIT_PLACEHOLDER, NULL, p, KLOAK_ENC_HPACK_HUFFMAN);
		return;
	}
	/* Placeholder characters cost at most 8 bits: len + 1 bytes always hold it. */
	n = secret->len + 1 < avail ? secret->len + 1 : avail;
	barrier_var(n);
	n &= HUFF_BUF - 1;
	if (n == 0 || n > KLOAK_MAX_SECRET + 1 || bpf_probe_read_user(hs->user, n, (void *)addr))
		return;
	n = huff_encode(hs, secret, 0, shift);
	placeholder_bits = hs->bits;
	if (n == 0 || n > avail) {
		blocked_as(c, KLOAK_REASON_SPLIT_PLACEHOLDER, secret, p, KLOAK_ENC_HPACK_HUFFMAN);
		return;
	}
	if (n > secret->len + 1 || !huff_equal(hs, n))
		return;
	count(KLOAK_CTR_MATCHES);
	s->huff_next_free = start + placeholder_bits;
	reason = policy_check(c, secret);
	if (reason != KLOAK_REASON_NONE) {
		blocked_as(c, reason, secret, p, KLOAK_ENC_HPACK_HUFFMAN);
		return;
	}
	if (choose_strategy(c, can_write, false, &reason) != KLOAK_STRATEGY_IN_PLACE) {
		blocked_as(c, reason, secret, p, KLOAK_ENC_HPACK_HUFFMAN);
		return;
	}
	list = restore_list(c);
	if (!list || list->count >= KLOAK_MAX_MATCHES) {
		blocked_as(c, KLOAK_REASON_TOO_MANY_PLACEHOLDERS, secret, p, KLOAK_ENC_HPACK_HUFFMAN);
		return;
	}
	barrier_var(n);
	n &= HUFF_BUF - 1;
	if (n < HUFF_MIN_BYTES || n > KLOAK_MAX_SECRET + 1)
		return;
	/* As for plain text (S4): prove the range writable with its own bytes first. */
	if (bpf_probe_write_user((void *)addr, hs->user, n)) {
		blocked_as(c, KLOAK_REASON_WRITE_REFUSED, secret, p, KLOAK_ENC_HPACK_HUFFMAN);
		return;
	}
	/*
	 * Minting guarantees equal bit counts; a record that broke that promise
	 * would shift every following bit of the frame, so it is never written.
	 */
	if (huff_encode(hs, secret, 1, shift) != n || hs->bits != placeholder_bits ||
	    bpf_probe_write_user((void *)addr, hs->out, n)) {
		bpf_probe_write_user((void *)addr, hs->user, n);
		blocked_as(c, KLOAK_REASON_WRITE_REFUSED, secret, p, KLOAK_ENC_HPACK_HUFFMAN);
		return;
	}
	remember_rewrite(list, addr, &key, KLOAK_ENC_HPACK_HUFFMAN, shift);
	count(KLOAK_CTR_REWRITTEN);
	tls_event(c, KLOAK_EVENT_TLS_REWRITTEN, KLOAK_REASON_NONE, secret, p, KLOAK_ENC_HPACK_HUFFMAN);
}

#define DEFINE_HUFF_CANDIDATE_STEP(name, can_write)                              \
	static long name(__u64 index, void *data)                                \
	{                                                                        \
		struct write_ctx *c = ctx_of(data);                              \
		struct scan_scratch *s = c->scratch;                             \
		__u64 i = index;                                                 \
		__u32 packed;                                                    \
                                                                                 \
		barrier_var(i);                                                  \
		if (!s || i >= s->huff_count || i >= KLOAK_MAX_MATCHES)          \
			return 1;                                                \
		packed = s->huff_cand[i];                                        \
		if ((packed >> 3) >= c->len)                                     \
			return 0;                                                \
		handle_huff_candidate(c, packed >> 3, packed & 7, can_write);    \
		return 0;                                                        \
	}

DEFINE_HUFF_CANDIDATE_STEP(huff_candidate_step_rw, true)
DEFINE_HUFF_CANDIDATE_STEP(huff_candidate_step_ro, false)

/*
 * Puts a Huffman-coded placeholder back after the write (S5): the user's
 * bits around it are read again, as the library may not have left them.
 */
static __always_inline bool huff_restore(struct kloak_restore_entry *entry, struct kloak_secret *secret)
{
	struct huff_scratch *hs = huff_scratch();
	__u32 n, last;

	if (!hs || bpf_probe_read_user(hs->user, 1, (void *)entry->addr))
		return false;
	n = huff_encode(hs, secret, 0, entry->shift);
	if (n == 0)
		return false;
	if (hs->pending & 7) {
		/* The last byte is shared with what follows: splice again with its current bits. */
		last = (n - 1) & (HUFF_BUF - 1);
		if (bpf_probe_read_user(&hs->user[last], 1, (void *)(entry->addr + last)))
			return false;
		n = huff_encode(hs, secret, 0, entry->shift);
	}
	barrier_var(n);
	n &= HUFF_BUF - 1;
	if (n < HUFF_MIN_BYTES || n > KLOAK_MAX_SECRET + 1)
		return false;
	return !bpf_probe_write_user((void *)entry->addr, hs->out, n);
}

#endif
