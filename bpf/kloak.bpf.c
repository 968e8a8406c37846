// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * The kloak data plane: TLS write hooks, connection attribution, DNS capture. Its stages (bpf/; maps in *_maps.h):
 * dns, names (S3) -> conn (S2) -> write hooks, exec hold (here) -> candidate, hpack -> rewrite in place (S5), or
 *   cipher_keys, gotls (keys) -> cipher_bind (records) -> tc (packets); events.bpf.h emits, cipher_selftest at load.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "kloak.h"
#include "maps.bpf.h"
#include "exec_maps.h"
#include "common.bpf.h"
#include "sock.bpf.h"
#include "events.bpf.h"
#include "names.bpf.h"
#include "dns.bpf.h"
#include "cipher_maps.h"
#include "cipher_tag.bpf.h"
#include "cipher_keys.bpf.h"
#include "cipher_bind.bpf.h"
#include "cipher_selftest.bpf.h"
#include "gotls.bpf.h"
#include "tc.bpf.h"
#include "conn.bpf.h"
#include "candidate.bpf.h"
#include "rewrite.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* OpenSSL and BoringSSL: SSL_write(ssl, buf, int num), SSL_write_ex(ssl, buf, size_t num, ...). */
static __always_inline int ssl_write_entry(struct pt_regs *ctx, __u32 hook, const bool can_write)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 ssl = PT_REGS_PARM1(ctx), buf = PT_REGS_PARM2(ctx), len = PT_REGS_PARM3(ctx);
	struct kloak_tls_call call = { .tls_ptr = ssl, .buf = buf, .hook = hook };
	struct kloak_conn_key key = conn_key(ssl);
	struct write_ctx c = {};
	__u32 tid = (__u32)pid_tgid;

	count(KLOAK_CTR_WRITE_CALLS);
	c.cgroup_id = enabled_cgroup();
	if (!c.cgroup_id)
		return 0;
	count(KLOAK_CTR_WRITE_ENABLED);
	c.rkey.tgid = pid_tgid >> 32;
	c.rkey.tid = tid;
	if (can_write)
		restore_begin(&c.rkey);
	if (hook == KLOAK_HOOK_SSL_WRITE)
		len = (__u64)(__s64)(int)len;
	if ((__s64)len <= 0)
		return 0;
	tls_write_begin(tid, &call);
	c.hook = hook;
	c.tls_ptr = ssl;
	c.fd = -1;
	c.conn = bpf_map_lookup_elem(&conns, &key);
	if (c.conn && (c.conn->flags & KLOAK_CONN_HAS_FD))
		c.fd = c.conn->fd;
	return on_tls_write(&c, buf, len, can_write);
}

static __always_inline void ssl_write_exit(const bool can_write)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct kloak_restore_key key = { .tgid = pid_tgid >> 32, .tid = tid };

	struct kloak_tls_call *call;

	/* Always, even if the thread left its cgroup meanwhile: this call's placeholders go back (S5). */
	if (can_write)
		restore_all(&key);
	if (!enabled_cgroup())
		return;
	call = bpf_map_lookup_elem(&tls_calls, &tid);
	if (call)
		note_memory_bio(call->tls_ptr, tid);
	bpf_map_delete_elem(&tls_calls, &tid);
	ct_write_done(tid);
}

SEC("uprobe")
int handle_ssl_write_rw(struct pt_regs *ctx)
{
	return ssl_write_entry(ctx, KLOAK_HOOK_SSL_WRITE, true);
}

SEC("uprobe")
int handle_ssl_write_ro(struct pt_regs *ctx)
{
	return ssl_write_entry(ctx, KLOAK_HOOK_SSL_WRITE, false);
}

SEC("uprobe")
int handle_ssl_write_ex_rw(struct pt_regs *ctx)
{
	return ssl_write_entry(ctx, KLOAK_HOOK_SSL_WRITE_EX, true);
}

SEC("uprobe")
int handle_ssl_write_ex_ro(struct pt_regs *ctx)
{
	return ssl_write_entry(ctx, KLOAK_HOOK_SSL_WRITE_EX, false);
}

SEC("uretprobe")
int handle_ssl_write_ret_rw(struct pt_regs *ctx)
{
	ssl_write_exit(true);
	return 0;
}

SEC("uretprobe")
int handle_ssl_write_ret_ro(struct pt_regs *ctx)
{
	ssl_write_exit(false);
	return 0;
}

/*
 * Go crypto/tls.(*Conn).Write(b []byte), register ABI: receiver in RAX, b in
 * RBX/RCX, the goroutine in R14. The fd comes from the receiver itself: its
 * net.Conn must be a *net.TCPConn (itab compared), whose netFD holds Sysfd.
 */
static __always_inline int go_conn_fd(struct pt_regs *ctx, __u64 conn)
{
	__u32 index = (__u32)bpf_get_attach_cookie(ctx);
	struct kloak_target *target = bpf_map_lookup_elem(&targets, &index);
	struct {
		__u64 itab;
		__u64 data;
	} iface;
	__u64 bias, close, write, netfd;
	__s64 sysfd;

	if (!target || !target->go_tcpconn_close || !target->go_tcpconn_write || !conn)
		return -1;
	bias = PT_REGS_IP(ctx) - target->func_vaddr;
	/*
	 * S2: only a net.Conn holding a *net.TCPConn leads to a socket fd. Its
	 * itab (inter, _type, hash + pad, then the methods sorted by name from
	 * offset 24) lists net.(*TCPConn).Close first and .Write eighth; both are
	 * in the function table of every build, unlike the itab's own symbol.
	 */
	if (bpf_probe_read_user(&iface, sizeof(iface), (void *)conn) || !iface.itab || !iface.data ||
	    bpf_probe_read_user(&close, sizeof(close), (void *)(iface.itab + 24)) ||
	    bpf_probe_read_user(&write, sizeof(write), (void *)(iface.itab + 24 + 7 * 8)) ||
	    close != target->go_tcpconn_close + bias || write != target->go_tcpconn_write + bias)
		return -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)iface.data) || !netfd ||
	    bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + target->go_fd_offset)))
		return -1;
	return sysfd >= 0 && sysfd < 0x7fffffff ? (int)sysfd : -1;
}

static __always_inline int go_write_entry(struct pt_regs *ctx, const bool can_write)
{
	struct kloak_conn_key go_key = conn_key(ctx->ax);
	__u64 buf = ctx->bx, len = ctx->cx;
	struct write_ctx c = {};

	/* Both read before any branch: clang may otherwise merge them into one load at a computed ctx offset. */
	barrier_var(buf);
	barrier_var(len);
	count(KLOAK_CTR_WRITE_CALLS);
	c.cgroup_id = enabled_cgroup();
	if (!c.cgroup_id)
		return 0;
	count(KLOAK_CTR_WRITE_ENABLED);
	c.hook = KLOAK_HOOK_GO_WRITE;
	c.tls_ptr = ctx->ax;
	c.conn = bpf_map_lookup_elem(&conns, &go_key);
	c.fd = go_conn_fd(ctx, ctx->ax);
	c.rkey.tgid = bpf_get_current_pid_tgid() >> 32;
	c.rkey.goroutine = ctx->r14;
	if (can_write)
		restore_begin(&c.rkey);
	if ((__s64)len > 0)
		go_write_begin(ctx->r14, ctx->ax, buf);
	return on_tls_write(&c, buf, len, can_write);
}

SEC("uprobe")
int handle_go_write_rw(struct pt_regs *ctx)
{
	return go_write_entry(ctx, true);
}

SEC("uprobe")
int handle_go_write_ro(struct pt_regs *ctx)
{
	return go_write_entry(ctx, false);
}

/* Uprobes on the RET instructions of Write: Go stacks move, so no uretprobe. */
SEC("uprobe")
int handle_go_write_ret_rw(struct pt_regs *ctx)
{
	struct kloak_restore_key key = {
		.tgid = bpf_get_current_pid_tgid() >> 32,
		.goroutine = ctx->r14,
	};

	/* Always, even if the goroutine's thread left its cgroup meanwhile (S5). */
	restore_all(&key);
	if (enabled_cgroup())
		go_write_end(ctx->r14);
	return 0;
}

SEC("uprobe")
int handle_go_write_ret_ro(struct pt_regs *ctx)
{
	if (enabled_cgroup())
		go_write_end(ctx->r14);
	return 0;
}

/*
 * A protected process exec'd a file nobody has inspected: stop it before its
 * first instruction and tell userspace, which hooks the file (if it has TLS
 * to hook), records it in `files` and resumes the process. No write can race
 * the attachment.
 */
#define SIGSTOP 19
/* Longer than any pause of the agent's loader thread between two heartbeats. */
#define AGENT_STALE_NS 2000000000ULL

static __always_inline bool agent_alive(void)
{
	__u32 zero = 0;
	__u64 *beat = bpf_map_lookup_elem(&agent_heartbeat, &zero);

	return beat && *beat && bpf_ktime_get_boot_ns() - *beat < AGENT_STALE_NS;
}

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct kloak_file_key key = {};
	struct kloak_held hold = {};
	struct inode *inode;
	struct kloak_event *e;
	__u64 cgroup_id = enabled_cgroup();
	__u32 tgid;

	if (!cgroup_id)
		return 0;
	inode = BPF_CORE_READ(task, mm, exe_file, f_inode);
	if (!inode)
		return 0;
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key.ino = BPF_CORE_READ(inode, i_ino);
	if (bpf_map_lookup_elem(&files, &key))
		return 0;
	if (!agent_alive()) {
		count(KLOAK_CTR_HOLD_NO_AGENT);
		return 0;                /* not held: the file stays unhooked (fail closed) */
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(KLOAK_CTR_EVENTS_LOST);
		return 0;                /* not held: the file simply stays unhooked */
	}
	/* Recorded before the stop: a process is never stopped without a trace a sweep can find. */
	tgid = bpf_get_current_pid_tgid() >> 32;
	hold.cgroup_id = cgroup_id;
	hold.held_ns = bpf_ktime_get_boot_ns();
	if (bpf_map_update_elem(&held, &tgid, &hold, BPF_ANY)) {
		bpf_ringbuf_discard(e, 0);
		count(KLOAK_CTR_EVENTS_LOST);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = hold.held_ns;
	e->kind = KLOAK_EVENT_EXEC_HELD;
	e->fd = -1;
	event_set_task(e, cgroup_id);
	bpf_send_signal(SIGSTOP);
	/* Unlike decisions, a held process needs its reader now. */
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Keep every boundary type in BTF so the Rust side is generated from it. */
struct kloak_event kloak_event_ = {};
struct kloak_secret_key kloak_secret_key_ = {};
struct kloak_binding_key kloak_binding_key_ = {};
struct kloak_verified_key kloak_verified_key_ = {};
struct kloak_verified kloak_verified_ = {};
struct kloak_name_key kloak_name_key_ = {};
struct kloak_name kloak_name_ = {};
struct kloak_resolver_key kloak_resolver_key_ = {};
struct kloak_target kloak_target_ = {};
struct kloak_file_key kloak_file_key_ = {};
struct kloak_held kloak_held_ = {};
struct kloak_conn_key kloak_conn_key_ = {};
struct kloak_conn kloak_conn_ = {};
enum kloak_event_kind kloak_event_kind_ = 0;
enum kloak_reason kloak_reason_ = 0;
enum kloak_hook kloak_hook_ = 0;
enum kloak_counter kloak_counter_ = 0;
enum kloak_rewrite_mode kloak_rewrite_mode_ = 0;
enum kloak_encoding kloak_encoding_ = 0;
enum kloak_secret_flags kloak_secret_flags_ = 0;
enum kloak_limits kloak_limits_ = 0;
enum kloak_file_state kloak_file_state_ = 0;
enum kloak_strategy kloak_strategy_ = 0;
enum kloak_cipher kloak_cipher_ = 0;
enum kloak_patch_state kloak_patch_state_ = 0;
struct kloak_gcm_selftest kloak_gcm_selftest_ = {};
enum kloak_gcm_op kloak_gcm_op_ = 0;
struct kloak_ct_session kloak_ct_session_ = {};
struct kloak_flow_key kloak_flow_key_ = {};
struct kloak_ct_flow kloak_ct_flow_ = {};
