/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The write path: find placeholders in a TLS write, compare each in full
 * against the user's own buffer (S7), decide by binding, connection, port,
 * host and server name (S2, S3, S6), rewrite in place, and remember where,
 * so the placeholder can be written back after the library is done (S5).
 *
 * Programs come in two builds of the same code: *_rw may call
 * bpf_probe_write_user, *_ro never does, so it loads on kernels in lockdown
 * (observe mode). The loader picks one.
 */
#ifndef KLOAK_REWRITE_BPF_H
#define KLOAK_REWRITE_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "rewrite_maps.h"
#include "common.bpf.h"
#include "events.bpf.h"
#include "candidate.bpf.h"
#include "hpack.bpf.h"

/* A TLS write from an enabled cgroup (c->cgroup_id set): everything up to the rewrite. */
static __always_inline int on_tls_write(struct write_ctx *c, __u64 buf, __u64 len, const bool can_write)
{
	__u32 zero = 0, n;
	struct scan_scratch *s;

	if (!buf || len < KLOAK_MIN_SECRET)
		return 0;
	s = bpf_map_lookup_elem(&scan_buf, &zero);
	if (!s)
		return 0;
	c->buf = buf;
	c->total = len > 0xffffffffULL ? 0xffffffff : (__u32)len;
	c->len = c->total;
	if (c->len > KLOAK_SCAN_MAX) {
		c->len = KLOAK_SCAN_MAX;
		count(KLOAK_CTR_SCAN_TRUNCATED);
	}
	c->now = bpf_ktime_get_boot_ns();
	c->scratch = s;
	s->count = 0;
	s->huff_count = 0;
	s->huff_next_free = 0;
	n = c->len;
	barrier_var(n);
	n &= KLOAK_SCAN_MAX * 2 - 1;
	if (n == 0 || n > KLOAK_SCAN_MAX || bpf_probe_read_user(s->buf, n, (void *)buf))
		return 0;
	count_n(KLOAK_CTR_BYTES_SCANNED, c->len);
	bpf_loop((c->len + SCAN_BLOCK - 1) / SCAN_BLOCK, scan_step, c, 0);
	h2_collect(c);
	if (!s->count && !s->huff_count)
		return 0;
	/*
	 * The peer is read once, here: inside the candidate loops it would be
	 * verified once per loop and per state, beyond the verifier's budget.
	 */
	resolve_peer(c);
	if (s->count) {
		if (can_write)
			bpf_loop(KLOAK_MAX_MATCHES, candidate_step_rw, c, 0);
		else
			bpf_loop(KLOAK_MAX_MATCHES, candidate_step_ro, c, 0);
	}
	if (s->huff_count) {
		if (can_write)
			bpf_loop(KLOAK_MAX_MATCHES, huff_candidate_step_rw, c, 0);
		else
			bpf_loop(KLOAK_MAX_MATCHES, huff_candidate_step_ro, c, 0);
	}
	return 0;
}

/* Exit of a TLS write: put the placeholders back (S5). */
struct restore_loop {
	struct kloak_restore *list;
};

static __always_inline void restore_failed(struct kloak_secret *secret)
{
	struct kloak_event *e;

	count_blocked(KLOAK_REASON_RESTORE_FAILED);
	e = event_reserve(KLOAK_EVENT_TLS_BLOCKED, 0);
	if (!e)
		return;
	event_set_task(e, 0);
	e->reason = KLOAK_REASON_RESTORE_FAILED;
	e->secret_id = secret ? secret->id : 0;
	event_submit(e);
}

static long restore_step(__u64 index, void *data)
{
	struct kloak_restore *list = ((struct restore_loop *)data)->list;
	struct kloak_restore_entry *entry;
	struct kloak_secret *secret;
	__u64 i = index;
	__u32 len;

	barrier_var(i);
	if (i >= list->count || i >= KLOAK_MAX_MATCHES)
		return 1;
	entry = &list->entries[i];
	secret = bpf_map_lookup_elem(&secrets, &entry->key);
	if (secret && entry->encoding == KLOAK_ENC_HPACK_HUFFMAN) {
		if (huff_restore(entry, secret)) {
			count(KLOAK_CTR_RESTORED);
			return 0;
		}
		restore_failed(secret);
		return 0;
	}
	len = secret ? secret->len : 0;
	barrier_var(len);
	len &= KLOAK_MAX_SECRET * 2 - 1;
	if (secret && len >= KLOAK_MIN_SECRET && len <= KLOAK_MAX_SECRET &&
	    !bpf_probe_write_user((void *)entry->addr, secret->placeholder, len)) {
		count(KLOAK_CTR_RESTORED);
		return 0;
	}
	restore_failed(secret);
	return 0;
}

static __always_inline void restore_all(struct kloak_restore_key *key)
{
	struct restore_loop loop = { .list = bpf_map_lookup_elem(&restores, key) };

	if (!loop.list)
		return;
	if (loop.list->count)
		bpf_loop(KLOAK_MAX_MATCHES, restore_step, &loop, 0);
	bpf_map_delete_elem(&restores, key);
}

#endif
