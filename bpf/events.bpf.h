/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The one event emitter: every decision, DNS verdict and learned connection
 * goes out as event_reserve, the fields, event_submit. Only the exec hold
 * (handle_exec) reserves on its own: it must record the hold between the
 * reservation and the event, and wake its reader at once.
 */
#ifndef KLOAK_EVENTS_BPF_H
#define KLOAK_EVENTS_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "common.bpf.h"
#include "sock.bpf.h"

/*
 * A zeroed event for the current task, or NULL when the ring buffer is full.
 * Events are submitted without a wakeup (BPF_RB_NO_WAKEUP): waking the reader
 * costs the writing thread an interrupt per decision, while the loader polls
 * every 50 ms anyway.
 */
static __always_inline struct kloak_event *event_reserve(__u32 kind, __u32 hook)
{
	struct kloak_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(KLOAK_CTR_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->kind = kind;
	e->hook = hook;
	e->fd = -1;
	return e;
}

static __always_inline void event_set_task(struct kloak_event *e, __u64 cgroup_id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->cgroup_id = cgroup_id;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/*
 * The peer a decision concerns, when known: a struct peer lvalue. A macro: a
 * function taking a pointer would hide the caller's alignment, and the
 * 16-byte address would be copied 2 bytes at a time.
 */
#define event_set_peer(e, peer)                                                  \
	do {                                                                     \
		(e)->addr = (peer).addr;                                         \
		(e)->port = (peer).port;                                         \
		(e)->family = (peer).family;                                     \
	} while (0)

/* Without a wakeup: see event_reserve. */
static __always_inline void event_submit(struct kloak_event *e)
{
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

#endif
