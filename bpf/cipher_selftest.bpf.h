/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Load-time self-test of the ciphertext strategy's arithmetic (AES, GF(2^128)
 * multiplication, the tag difference), run by userspace (dataplane::gcm)
 * against its own implementation before any session is trusted to it.
 */
#ifndef KLOAK_CIPHER_SELFTEST_BPF_H
#define KLOAK_CIPHER_SELFTEST_BPF_H

#include "kloak.h"
#include "gcm.bpf.h"
#include "cipher_maps.h"
#include "cipher_tag.bpf.h"

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
