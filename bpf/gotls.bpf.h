/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Key capture for Go's crypto/tls (TLS 1.3), the ciphertext strategy's
 * counterpart of handle_cipher_init. No struct layout of crypto/tls is read;
 * every link comes from function arguments (register ABI: receiver in RAX,
 * then RBX, RCX, ...; the goroutine in R14):
 *
 * 1. (*Conn).handshakeContext(c): goroutine -> Conn, until its RETs.
 * 2. (*halfConn).encrypt(hc) during that handshake: hc is the Conn's write
 *    half. Its first call seals the ClientHello, before any key exists, so
 *    the write half is known before its first key; the read half never
 *    encrypts and is never linked.
 * 3. (*halfConn).setTrafficSecret(hc, suite, ...) on a write half: a new write
 *    key follows. The suite's first field, its uint16 TLS id, says whether
 *    it is AES-GCM; the Conn's old session is marked unknown first, so a key
 *    that is not seen next can never leave the old H in use.
 * 4. aeadAESGCMTLS13(key, nonceMask), called by (3) with the fresh key:
 *    H = AES_K(0^128) for that Conn, as for OpenSSL; the key is dropped.
 *
 * TLS 1.2 keys are made in pairs before either half is chosen, so they are
 * not linked: such Go sessions stay unknown (fail closed).
 */
#ifndef KLOAK_GOTLS_BPF_H
#define KLOAK_GOTLS_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "common.bpf.h"
#include "gotls_maps.h"
#include "cipher_maps.h"
#include "cipher_keys.bpf.h"
#include "cipher_bind.bpf.h"

/* TLS 1.3 cipher suite ids (RFC 8446, B.4). */
#define TLS_AES_128_GCM_SHA256 0x1301
#define TLS_AES_256_GCM_SHA384 0x1302

static __always_inline void go_write_begin(__u64 goroutine, __u64 conn, __u64 buf)
{
	struct kloak_tls_call call = { .tls_ptr = conn, .buf = buf, .hook = KLOAK_HOOK_GO_WRITE };
	struct kloak_conn_key g = conn_key(goroutine);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (cfg_strategy == KLOAK_STRATEGY_IN_PLACE)
		return;
	tls_write_begin(tid, &call);
	bpf_map_update_elem(&go_write_threads, &g, &tid, BPF_ANY);
}

/* Whatever the Write queued but never bound is reported (record_not_seen). */
static __always_inline void go_write_end(__u64 goroutine)
{
	struct kloak_conn_key g = conn_key(goroutine);
	__u32 *started = bpf_map_lookup_elem(&go_write_threads, &g), tid;
	struct kloak_tls_call *call;

	if (!started)
		return;
	tid = *started;
	bpf_map_delete_elem(&go_write_threads, &g);
	call = bpf_map_lookup_elem(&tls_calls, &tid);
	if (call && call->hook == KLOAK_HOOK_GO_WRITE)
		bpf_map_delete_elem(&tls_calls, &tid);
	ct_write_done(tid);
}

/*
 * The Go scheduler may move a goroutine to another thread between its Write
 * call and the socket write (preemption, a contended lock): the socket write
 * then comes from a thread with no TLS call of its own. The goroutine (R14 in
 * Go's register ABI, still set at the syscall) names the call: its state
 * moves to this thread, so binding finds it and the write's end releases it.
 * A subprogram: its reads need stack the write path's frames cannot spare.
 */
static __noinline void go_follow_migration(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), from;
	struct kloak_conn_key g;
	struct kloak_tls_call *call;
	struct kloak_ct_write *w;
	__u32 *started;

	if (!regs)
		return;
	g = conn_key(BPF_CORE_READ(regs, r14));
	started = bpf_map_lookup_elem(&go_write_threads, &g);
	if (!started || *started == tid)
		return;
	from = *started;
	call = bpf_map_lookup_elem(&tls_calls, &from);
	if (!call || call->hook != KLOAK_HOOK_GO_WRITE)
		return;
	if (bpf_map_update_elem(&tls_calls, &tid, call, BPF_ANY))
		return;
	bpf_map_delete_elem(&tls_calls, &from);
	w = bpf_map_lookup_elem(&ct_writes, &from);
	if (w && !bpf_map_update_elem(&ct_writes, &tid, w, BPF_ANY))
		bpf_map_delete_elem(&ct_writes, &from);
	bpf_map_update_elem(&go_write_threads, &g, &tid, BPF_ANY);
}

SEC("uprobe")
int handle_go_handshake(struct pt_regs *ctx)
{
	struct kloak_conn_key g = conn_key(ctx->r14);
	__u64 conn = ctx->ax;

	if (enabled_cgroup() && conn)
		bpf_map_update_elem(&go_handshakes, &g, &conn, BPF_ANY);
	return 0;
}

/* Uprobes on the RET instructions of handshakeContext (Go stacks move: no uretprobe). */
SEC("uprobe")
int handle_go_handshake_ret(struct pt_regs *ctx)
{
	struct kloak_conn_key g = conn_key(ctx->r14);

	bpf_map_delete_elem(&go_handshakes, &g);
	return 0;
}

SEC("uprobe")
int handle_go_encrypt(struct pt_regs *ctx)
{
	struct kloak_conn_key g = conn_key(ctx->r14), half = conn_key(ctx->ax);
	__u64 *conn = bpf_map_lookup_elem(&go_handshakes, &g);

	if (conn && ctx->ax)
		bpf_map_update_elem(&go_write_halves, &half, conn, BPF_ANY);
	return 0;
}

SEC("uprobe")
int handle_go_traffic_secret(struct pt_regs *ctx)
{
	struct kloak_conn_key g = conn_key(ctx->r14), half = conn_key(ctx->ax), conn_k;
	__u64 *conn = bpf_map_lookup_elem(&go_write_halves, &half), conn_ptr;
	struct ct_scratch *s;
	__u16 suite = 0;

	if (!conn || !enabled_cgroup())
		return 0;
	conn_ptr = *conn;
	conn_k = conn_key(conn_ptr);
	s = ct_scratch();
	if (!s)
		return 0;
	/* cipherSuiteTLS13 starts with its id (uint16), in every Go release with TLS 1.3. */
	bpf_probe_read_user(&suite, sizeof(suite), (void *)ctx->bx);
	__builtin_memset(&s->sess, 0, sizeof(s->sess));
	s->sess.tls13 = 1;
	s->sess.nid = suite;
	if (suite == TLS_AES_128_GCM_SHA256 || suite == TLS_AES_256_GCM_SHA384) {
		s->sess.cipher = KLOAK_CIPHER_UNKNOWN;
		bpf_map_update_elem(&go_key_pending, &g, &conn_ptr, BPF_ANY);
	} else {
		s->sess.cipher = suite ? KLOAK_CIPHER_OTHER : KLOAK_CIPHER_UNKNOWN;
		bpf_map_delete_elem(&go_key_pending, &g);
	}
	bpf_map_update_elem(&ct_sessions, &conn_k, &s->sess, BPF_ANY);
	return 0;
}

SEC("uprobe")
int handle_go_aead_tls13(struct pt_regs *ctx)
{
	struct kloak_conn_key g = conn_key(ctx->r14), conn_k;
	__u64 *conn = bpf_map_lookup_elem(&go_key_pending, &g);
	__u64 key_len = ctx->bx;
	struct ct_scratch *s;

	if (!conn)
		return 0;
	conn_k = conn_key(*conn);
	bpf_map_delete_elem(&go_key_pending, &g);
	s = ct_scratch();
	if (!s || (key_len != 16 && key_len != 32))
		return 0;
	__builtin_memset(&s->sess, 0, sizeof(s->sess));
	s->sess.tls13 = 1;
	s->sess.cipher = key_len == 16 ? KLOAK_CIPHER_AES_128_GCM : KLOAK_CIPHER_AES_256_GCM;
	s->sess.nid = key_len == 16 ? NID_AES_128_GCM : NID_AES_256_GCM;
	ct_derive_h(s, (const __u8 *)ctx->ax, (__u32)key_len);
	bpf_map_update_elem(&ct_sessions, &conn_k, &s->sess, BPF_ANY);
	return 0;
}

#endif
