/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * S2: which socket a TLS object writes to. SSL_set_fd names it; the socket
 * syscalls a thread makes while inside the TLS library (handshake, earlier
 * writes) confirm or correct it; SSL_set_bio makes it unknown again. The
 * ClientHello seen on the way gives the server name (S3).
 */
#ifndef KLOAK_CONN_BPF_H
#define KLOAK_CONN_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "conn_maps.h"
#include "common.bpf.h"
#include "events.bpf.h"
#include "sock.bpf.h"
#include "names_maps.h"
#include "names.bpf.h"
#include "cipher_bind.bpf.h"
#include "gotls.bpf.h"

#define TLS_HANDSHAKE 0x16
#define TLS_CLIENT_HELLO 0x01
#define TLS_EXT_SERVER_NAME 0
#define TLS_MAX_EXTENSIONS 32

static __always_inline void conn_event(__u64 cgroup_id, __u32 hook, int fd)
{
	struct kloak_event *e;
	struct peer p = {};

	count(KLOAK_CTR_CONN_LEARNED);
	e = event_reserve(KLOAK_EVENT_CONN_LEARNED, hook);
	if (!e)
		return;
	event_set_task(e, cgroup_id);
	e->fd = fd;
	if (peer_of_fd(fd, &p))
		event_set_peer(e, p);
	event_submit(e);
}

/* Records that tls_ptr writes to fd; a changed fd forgets the old server name. */
static __always_inline void conn_set_fd(__u64 cgroup_id, __u64 tls_ptr, int fd, __u32 hook)
{
	struct kloak_conn_key key = conn_key(tls_ptr);
	struct kloak_conn *conn = bpf_map_lookup_elem(&conns, &key);
	struct kloak_conn fresh = { .fd = fd, .flags = KLOAK_CONN_HAS_FD };

	if (conn && conn->fd == fd && (conn->flags & KLOAK_CONN_HAS_FD))
		return;
	if (conn && !(conn->flags & KLOAK_CONN_HAS_FD)) {
		/* First socket of this object: keep what its writes taught (HTTP/2 framing). */
		conn->fd = fd;
		conn->flags |= KLOAK_CONN_HAS_FD;
	} else {
		bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY);
	}
	conn_event(cgroup_id, hook, fd);
}

SEC("uprobe")
int BPF_UPROBE(handle_ssl_set_fd, void *ssl, int fd)
{
	__u64 cgroup_id = enabled_cgroup();

	if (cgroup_id && tcp_sock_of_fd(fd))
		conn_set_fd(cgroup_id, (__u64)ssl, fd, KLOAK_HOOK_SSL_WRITE);
	return 0;
}

SEC("uprobe")
int BPF_UPROBE(handle_ssl_set_bio, void *ssl)
{
	struct kloak_conn_key key = conn_key((__u64)ssl);

	if (enabled_cgroup())
		bpf_map_delete_elem(&conns, &key);
	return 0;
}

/*
 * A TLS call returned and its object still has no socket: with a memory BIO
 * its output leaves with the thread's next TCP write (on_socket_write).
 */
static __always_inline void note_memory_bio(__u64 tls_ptr, __u32 tid)
{
	struct kloak_conn_key key = conn_key(tls_ptr);
	struct kloak_conn *conn = bpf_map_lookup_elem(&conns, &key);

	if (!conn || !(conn->flags & KLOAK_CONN_HAS_FD))
		bpf_map_update_elem(&bio_pending, &tid, &tls_ptr, BPF_ANY);
}

/*
 * Entry of SSL_do_handshake, SSL_connect and SSL_read(_ex): each may drive
 * the handshake. A handshake inside SSL_write (implicit handshake) must not
 * replace or end the write's own record: the write's return probe needs it.
 */
SEC("uprobe")
int BPF_UPROBE(handle_ssl_handshake, void *ssl)
{
	struct kloak_tls_call call = { .tls_ptr = (__u64)ssl };
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (enabled_cgroup())
		bpf_map_update_elem(&tls_calls, &tid, &call, BPF_NOEXIST);
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(handle_ssl_handshake_ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct kloak_tls_call *call = bpf_map_lookup_elem(&tls_calls, &tid);

	if (call && call->buf == 0) {
		note_memory_bio(call->tls_ptr, tid);
		bpf_map_delete_elem(&tls_calls, &tid);
	}
	return 0;
}

/* Reads the server name of a ClientHello record at buf into n (lower case). */
static __always_inline bool client_hello_sni(const __u8 *buf, __u32 len, struct name_ctx *n)
{
	__u8 head[6];
	__u16 u16;
	__u8 u8;
	__u32 off = 5 + 4 + 2 + 32, end;

	if (len < off + 1 || bpf_probe_read_user(head, sizeof(head), buf))
		return false;
	if (head[0] != TLS_HANDSHAKE || head[5] != TLS_CLIENT_HELLO)
		return false;
	if (bpf_probe_read_user(&u8, 1, buf + off))          /* session id */
		return false;
	off += 1 + u8;
	if (bpf_probe_read_user(&u16, 2, buf + off))         /* cipher suites */
		return false;
	off += 2 + bpf_ntohs(u16);
	if (bpf_probe_read_user(&u8, 1, buf + off))          /* compression */
		return false;
	off += 1 + u8;
	if (bpf_probe_read_user(&u16, 2, buf + off))         /* extensions */
		return false;
	off += 2;
	end = off + bpf_ntohs(u16);
	if (end > len)
		end = len;
	for (int i = 0; i < TLS_MAX_EXTENSIONS; i++) {
		struct {
			__u16 type;
			__u16 len;
		} ext;

		if (off + 4 > end || bpf_probe_read_user(&ext, sizeof(ext), buf + off))
			return false;
		off += 4;
		if (bpf_ntohs(ext.type) == TLS_EXT_SERVER_NAME) {
			struct {
				__u16 list_len;
				__u8 type;
				__u16 name_len;
			} __attribute__((packed)) sni;
			__u32 name_len;

			if (bpf_probe_read_user(&sni, sizeof(sni), buf + off) || sni.type != 0)
				return false;
			name_len = bpf_ntohs(sni.name_len);
			if (name_len == 0 || name_len >= KLOAK_NAME_MAX)
				return false;
			if (bpf_probe_read_user(n->name, name_len & (KLOAK_NAME_MAX - 1), buf + off + sizeof(sni)))
				return false;
			n->len = name_len;
			for (__u32 j = 0; j < KLOAK_NAME_MAX; j++) {
				char c = n->name[j];

				if (j >= name_len)
					break;
				if (c >= 'A' && c <= 'Z')
					n->name[j] = c + ('a' - 'A');
			}
			if (n->name[(name_len - 1) & (KLOAK_NAME_MAX - 1)] == '.')
				n->len = name_len - 1;
			return true;
		}
		off += bpf_ntohs(ext.len);
	}
	return false;
}

/* The server name of a ClientHello this connection sends decides which hosts it may be. */
static __always_inline void conn_learn_sni(struct kloak_conn_key *key, const __u8 *buf, __u32 len)
{
	struct kloak_conn *conn = bpf_map_lookup_elem(&conns, key);
	struct name_ctx *n;

	if (!conn || len < 48)
		return;
	n = name_ctx_get(NAME_SLOT_TASK);
	if (!n || !client_hello_sni(buf, len, n))
		return;
	name_match_all(n);
	conn->flags |= KLOAK_CONN_HAS_SNI;
	conn->sni_host_count = 0;
	if (!name_ctx_intact(n))
		return;                  /* scratch reused: no host matches (fail closed) */
	for (__u32 i = 0; i < KLOAK_MAX_HOSTS; i++) {
		if (i >= n->match.count)
			break;
		conn->sni_host_ids[i & (KLOAK_MAX_HOSTS - 1)] = n->match.ids[i & (KLOAK_MAX_HOSTS - 1)];
		conn->sni_host_count = i + 1;
	}
}

static __always_inline bool is_client_hello(const __u8 *buf, __u32 len)
{
	__u8 head[6];

	return buf && len >= sizeof(head) && !bpf_probe_read_user(head, sizeof(head), buf) &&
	       head[0] == TLS_HANDSHAKE && head[1] == 3 && head[5] == TLS_CLIENT_HELLO;
}

/*
 * The first TCP write of a thread after a memory-BIO TLS call. It names the
 * object's socket only when it is that object's ClientHello going out as the
 * very first bytes of a fresh connection: a later write (another object's
 * data flushed from a callback) never attributes. A process that moves
 * ciphertext itself controls where it goes anyway (it holds the session
 * keys); what this guarantees is the runtime's own, ordinary path.
 */
static __always_inline void on_memory_bio_write(__u32 tid, int fd, const __u8 *buf, __u32 len)
{
	__u64 *pending = bpf_map_lookup_elem(&bio_pending, &tid);
	struct kloak_conn_key key;
	struct sock *sk;
	__u64 cgroup_id, tls_ptr;

	if (!pending)
		return;
	sk = tcp_sock_of_fd(fd);
	if (!sk)
		return;                  /* pipes, UDP: not the TLS output */
	tls_ptr = *pending;
	bpf_map_delete_elem(&bio_pending, &tid);
	cgroup_id = enabled_cgroup();
	if (!cgroup_id || !is_client_hello(buf, len) ||
	    BPF_CORE_READ((struct tcp_sock *)sk, bytes_sent) != 0)
		return;
	conn_set_fd(cgroup_id, tls_ptr, fd, KLOAK_HOOK_SYSCALL);
	key = conn_key(tls_ptr);
	conn_learn_sni(&key, buf, len);
}

/* A socket write by a thread inside the TLS library: learn the object's fd. */
static __always_inline void on_socket_write(int fd, const __u8 *buf, __u32 len)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct kloak_tls_call *call = bpf_map_lookup_elem(&tls_calls, &tid);
	struct kloak_conn_key key;
	__u64 cgroup_id;

	if (!call) {
		on_memory_bio_write(tid, fd, buf, len);
		return;
	}
	/* A Go Conn names its own socket (go_conn_fd); its call is only here for binding. */
	if (call->hook == KLOAK_HOOK_GO_WRITE)
		return;
	cgroup_id = enabled_cgroup();
	if (!cgroup_id || !tcp_sock_of_fd(fd))
		return;
	conn_set_fd(cgroup_id, call->tls_ptr, fd, KLOAK_HOOK_SYSCALL);
	key = conn_key(call->tls_ptr);
	/* The ClientHello leaves during the handshake call (call->buf is 0 there). */
	if (buf && !call->buf)
		conn_learn_sni(&key, buf, len);
}

/* Cheap test first: is this thread inside, or just out of, a TLS call? */
static __always_inline bool tls_thread(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	return bpf_map_lookup_elem(&tls_calls, &tid) || bpf_map_lookup_elem(&bio_pending, &tid);
}

/*
 * Attribution and the ciphertext strategy's binding each run in a callback
 * of their own: a callback gets its own stack frame, and on 6.1 the frames
 * of a program and everything it calls share 512 bytes.
 */
struct socket_write {
	const __u8 *buf;
	__s32 fd;
	__u32 len;
};

static long attribute_step(__u64 index, void *data)
{
	struct socket_write *w = data;

	on_socket_write(w->fd, w->buf, w->len);
	return 1;
}

static long bind_step(__u64 index, void *data)
{
	struct socket_write *w = data;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct kloak_tls_call *call = bpf_map_lookup_elem(&tls_calls, &tid);

	if (call && call->buf)
		ct_on_socket_write(tid, call->tls_ptr, w->fd, w->buf, w->len);
	return 1;
}

static __always_inline void socket_write(int fd, const __u8 *buf, __u32 len)
{
	struct socket_write w = { .buf = buf, .fd = fd, .len = len };

	/* Every write syscall on the machine comes here: the cheap test first. */
	if (!tls_thread()) {
		/* Only a protected Go program's write, under a strategy that binds records, can have moved. */
		if (cfg_strategy == KLOAK_STRATEGY_IN_PLACE || !enabled_cgroup())
			return;
		go_follow_migration();
		if (!tls_thread())
			return;
	}
	bpf_loop(1, attribute_step, &w, 0);
	bpf_loop(1, bind_step, &w, 0);
}

/* x86-64 syscall numbers: the one program below tells the four calls apart by the tracepoint's id. */
#define KLOAK_NR_WRITE 1
#define KLOAK_NR_WRITEV 20
#define KLOAK_NR_SENDTO 44
#define KLOAK_NR_SENDMSG 46

/* The first iovec of writev(fd, iov, n) or of sendmsg's message; NULL when it cannot be read. */
static __always_inline void socket_write_iov(int fd, const struct iovec *first)
{
	struct iovec iov = {};

	if (bpf_probe_read_user(&iov, sizeof(iov), first))
		socket_write(fd, NULL, 0);
	else
		socket_write(fd, iov.iov_base, (__u32)iov.iov_len);
}

/*
 * Attached to sys_enter_write, _sendto, _writev and _sendmsg: one program, so
 * the verifier walks the attribution path once per load instead of four times.
 */
SEC("tracepoint")
int handle_sys_send(struct trace_event_raw_sys_enter *ctx)
{
	int fd = (int)ctx->args[0];
	struct user_msghdr msg = {};

	switch (ctx->id) {
	case KLOAK_NR_WRITE:
	case KLOAK_NR_SENDTO:
		socket_write(fd, (const __u8 *)ctx->args[1], (__u32)ctx->args[2]);
		break;
	case KLOAK_NR_WRITEV:
		if (tls_thread())
			socket_write_iov(fd, (const struct iovec *)ctx->args[1]);
		break;
	case KLOAK_NR_SENDMSG:
		if (!tls_thread())
			break;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)ctx->args[1]) || !msg.msg_iov)
			socket_write(fd, NULL, 0);
		else
			socket_write_iov(fd, msg.msg_iov);
		break;
	}
	return 0;
}

#endif
