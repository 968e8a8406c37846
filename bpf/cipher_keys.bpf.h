/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Stage 1 of the ciphertext strategy (see cipher_maps.h): key capture. The
 * session's write cipher and key are taken from EVP_CipherInit_ex inside a
 * TLS call; H = AES_K(0^128) is derived, the key dropped. Also answers the
 * write path's question: can this object's placeholders be patched on the
 * wire at all (ct_session_reason)?
 */
#ifndef KLOAK_CIPHER_KEYS_BPF_H
#define KLOAK_CIPHER_KEYS_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "common.bpf.h"
#include "gcm.bpf.h"
#include "cipher_maps.h"
#include "cipher_tag.bpf.h"

/* OpenSSL's NIDs, stable since 1.0 (and BoringSSL's). */
#define NID_AES_128_GCM 895
#define NID_AES_256_GCM 901

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

#endif
