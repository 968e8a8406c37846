/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The arithmetic of the ciphertext strategy: AES (one block, to derive the
 * GHASH key H = AES_K(0^128) from a captured session key) and
 * multiplication in GF(2^128) with GCM's bit order (NIST SP 800-38D 6.3).
 *
 * Values are kept as two big-endian halves: hi holds bytes 0..7 of the
 * block, lo bytes 8..15, so "bit 0" of the spec is the top bit of hi.
 * Every loop is branch-free in its data, so the verifier walks it once.
 * Userspace checks these against its own implementation at load time
 * (handle_gcm_selftest, dataplane::gcm).
 */
#ifndef KLOAK_GCM_BPF_H
#define KLOAK_GCM_BPF_H

struct gf128 {
	__u64 hi;
	__u64 lo;
};

static __always_inline struct gf128 gf128_load(const __u8 bytes[16])
{
	struct gf128 v;

	__builtin_memcpy(&v.hi, bytes, 8);
	__builtin_memcpy(&v.lo, bytes + 8, 8);
	v.hi = __builtin_bswap64(v.hi);
	v.lo = __builtin_bswap64(v.lo);
	return v;
}

static __always_inline void gf128_store(__u8 bytes[16], struct gf128 v)
{
	__u64 hi = __builtin_bswap64(v.hi), lo = __builtin_bswap64(v.lo);

	__builtin_memcpy(bytes, &hi, 8);
	__builtin_memcpy(bytes + 8, &lo, 8);
}

/*
 * A multiplication in progress, in map memory: it runs as a bpf_loop of
 * eight 16-bit steps, so the verifier checks one small step per call site
 * instead of 128 unrolled rounds on every path that multiplies.
 */
struct gf_mul {
	__u64 x[2];                      /* hi, lo */
	struct gf128 v;
	struct gf128 z;
};

struct gf_mul_loop {
	struct gf_mul *m;
};

#define GF_MUL_STEP_BITS 16

static long gf_mul_step(__u64 index, void *data)
{
	struct gf_mul *m = ((struct gf_mul_loop *)data)->m;
	__u64 word = m->x[(index >> 2) & 1];
	__u32 first = ((__u32)index & 3) * GF_MUL_STEP_BITS;
	struct gf128 z = m->z, v = m->v;

	for (__u32 b = 0; b < GF_MUL_STEP_BITS; b++) {
		__u64 take = 0 - ((word >> (63 - first - b)) & 1);
		__u64 carry = 0 - (v.lo & 1);

		z.hi ^= v.hi & take;
		z.lo ^= v.lo & take;
		v.lo = (v.lo >> 1) | (v.hi << 63);
		v.hi = (v.hi >> 1) ^ (carry & 0xe100000000000000ULL);
	}
	m->z = z;
	m->v = v;
	return 0;
}

/* *acc = *acc * y, all in map memory: nothing big on the caller's stack. */
static __always_inline void gf128_mul_into(struct gf_mul *m, struct gf128 *acc, const __u8 y[16])
{
	struct gf_mul_loop loop = { .m = m };
	__u64 word;

	m->x[0] = acc->hi;
	m->x[1] = acc->lo;
	__builtin_memcpy(&word, y, 8);
	m->v.hi = __builtin_bswap64(word);
	__builtin_memcpy(&word, y + 8, 8);
	m->v.lo = __builtin_bswap64(word);
	m->z.hi = m->z.lo = 0;
	bpf_loop(128 / GF_MUL_STEP_BITS, gf_mul_step, &loop, 0);
	acc->hi = m->z.hi;
	acc->lo = m->z.lo;
}

/* x * y in GF(2^128), reduction polynomial x^128 + x^7 + x^2 + x + 1 (R = 0xe1 || 0^120). */
static __always_inline struct gf128 gf128_mul(struct gf_mul *m, struct gf128 x, struct gf128 y)
{
	struct gf_mul_loop loop = { .m = m };

	m->x[0] = x.hi;
	m->x[1] = x.lo;
	m->v = y;
	m->z.hi = m->z.lo = 0;
	bpf_loop(128 / GF_MUL_STEP_BITS, gf_mul_step, &loop, 0);
	return m->z;
}

/* The FIPS-197 S-box. */
static const __u8 aes_sbox[256] = {
	0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
	0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
	0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
	0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
	0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
	0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
	0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
	0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
	0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
	0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
	0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
	0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
	0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
	0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
	0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
	0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
};

#define AES_MAX_ROUND_KEYS 60        /* AES-256: 4 * (14 + 1) words */
#define AES_W_SLOTS 64               /* a power of two: indexes are masked */

/* Working memory of one AES block: too big for the program's stack. */
struct aes_scratch {
	__u32 w[AES_W_SLOTS];
	__u8 key[32];
	__u8 state[16];
	__u8 tmp[16];
};

static __always_inline __u32 aes_sub_word(__u32 x)
{
	return ((__u32)aes_sbox[(x >> 24) & 0xff] << 24) | ((__u32)aes_sbox[(x >> 16) & 0xff] << 16) |
	       ((__u32)aes_sbox[(x >> 8) & 0xff] << 8) | (__u32)aes_sbox[x & 0xff];
}

static __always_inline __u8 aes_xtime(__u8 x)
{
	return (__u8)((x << 1) ^ (0x1b & (0 - (x >> 7))));
}

/*
 * Encrypts s->state in place under s->key (key_len 16 or 32 bytes), FIPS-197
 * section 5.1; round keys expanded as in section 5.2.
 */
static __always_inline void aes_encrypt_block(struct aes_scratch *s, __u32 key_len)
{
	__u32 nk = key_len == 32 ? 8 : 4, rounds = nk + 6, words = 4 * (rounds + 1);
	__u32 rcon = 1;

	for (__u32 i = 0; i < 8; i++) {
		if (i >= nk)
			break;
		s->w[i] = ((__u32)s->key[i * 4] << 24) | ((__u32)s->key[i * 4 + 1] << 16) |
			  ((__u32)s->key[i * 4 + 2] << 8) | (__u32)s->key[i * 4 + 3];
	}
	for (__u32 i = 4; i < AES_MAX_ROUND_KEYS; i++) {
		__u32 t;

		if (i < nk)
			continue;
		if (i >= words)
			break;
		t = s->w[(i - 1) & (AES_W_SLOTS - 1)];
		if (i % nk == 0) {
			t = aes_sub_word((t << 8) | (t >> 24)) ^ (rcon << 24);
			rcon = aes_xtime((__u8)rcon);
		} else if (nk == 8 && i % nk == 4) {
			t = aes_sub_word(t);
		}
		s->w[i & (AES_W_SLOTS - 1)] = s->w[(i - nk) & (AES_W_SLOTS - 1)] ^ t;
	}
	for (__u32 r = 0; r <= 14; r++) {
		if (r > rounds)
			break;
		if (r > 0) {
			/* SubBytes and ShiftRows: byte (row, col) comes from (row, col + row). */
			for (__u32 i = 0; i < 16; i++)
				s->tmp[i] = aes_sbox[s->state[((i & 3) + 4 * (((i >> 2) + (i & 3)) & 3)) & 15]];
			if (r < rounds) {
				for (__u32 c = 0; c < 4; c++) {
					__u8 a0 = s->tmp[4 * c], a1 = s->tmp[4 * c + 1];
					__u8 a2 = s->tmp[4 * c + 2], a3 = s->tmp[4 * c + 3];
					__u8 all = a0 ^ a1 ^ a2 ^ a3;

					s->state[4 * c] = a0 ^ all ^ aes_xtime(a0 ^ a1);
					s->state[4 * c + 1] = a1 ^ all ^ aes_xtime(a1 ^ a2);
					s->state[4 * c + 2] = a2 ^ all ^ aes_xtime(a2 ^ a3);
					s->state[4 * c + 3] = a3 ^ all ^ aes_xtime(a3 ^ a0);
				}
			} else {
				for (__u32 i = 0; i < 16; i++)
					s->state[i] = s->tmp[i];
			}
		}
		for (__u32 c = 0; c < 4; c++) {
			__u32 k = s->w[(4 * r + c) & (AES_W_SLOTS - 1)];

			s->state[4 * c] ^= k >> 24;
			s->state[4 * c + 1] ^= (k >> 16) & 0xff;
			s->state[4 * c + 2] ^= (k >> 8) & 0xff;
			s->state[4 * c + 3] ^= k & 0xff;
		}
	}
}

#endif
