/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Stage 3's arithmetic, shared with the self-test: the GHASH (tag) difference
 * of a record whose ciphertext bytes are XORed, by Horner's rule over the
 * changed blocks, and the session's powers of H it needs.
 */
#ifndef KLOAK_CIPHER_TAG_BPF_H
#define KLOAK_CIPHER_TAG_BPF_H

#include "kloak.h"
#include "gcm.bpf.h"
#include "cipher_maps.h"

#define GHASH_BLOCKS_MAX 1100            /* a record's ciphertext, in 16-byte blocks */

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

#endif
