/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Stages 2 and 3 of the ciphertext strategy (see cipher_maps.h): the queue of
 * allowed placeholders a TLS write fills (ct_queue, candidate.bpf.h), and the
 * binding of the records its socket writes carry to TCP sequence numbers, as
 * XOR patches tc.bpf.h applies. Placeholders never bound are reported when
 * the TLS call returns.
 */
#ifndef KLOAK_CIPHER_BIND_BPF_H
#define KLOAK_CIPHER_BIND_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "common.bpf.h"
#include "events.bpf.h"
#include "sock.bpf.h"
#include "gcm.bpf.h"
#include "cipher_maps.h"
#include "cipher_tag.bpf.h"
#include "cipher_keys.bpf.h"

#define TLS_APPLICATION_DATA 0x17
#define TLS_TAG_LEN 16
#define TLS12_EXPLICIT_NONCE 8
#define TLS_RECORD_MAX (16384 + 256)

/* ---- 2. queueing (called by the write hook) ---- */

/* The thread's pending write for tls_ptr, created empty when the call has none. */
static __always_inline struct kloak_ct_write *ct_write_for(__u32 tid, __u64 tls_ptr)
{
	struct kloak_ct_write *w = bpf_map_lookup_elem(&ct_writes, &tid);
	__u32 zero = 0;

	if (w && w->tls_ptr == tls_ptr)
		return w;
	w = bpf_map_lookup_elem(&ct_write_zero, &zero);
	if (!w || bpf_map_update_elem(&ct_writes, &tid, w, BPF_ANY))
		return NULL;
	w = bpf_map_lookup_elem(&ct_writes, &tid);
	if (w)
		w->tls_ptr = tls_ptr;
	return w;
}

/*
 * A TLS write begins on this thread: its socket writes are attributed and
 * bound to `call`, and a list a thread left behind (it never returned) is
 * not this write's.
 */
static __always_inline void tls_write_begin(__u32 tid, struct kloak_tls_call *call)
{
	bpf_map_update_elem(&tls_calls, &tid, call, BPF_ANY);
	bpf_map_delete_elem(&ct_writes, &tid);
}

/* ---- events of the later stages, which run outside the write hook ---- */

static __always_inline void ct_event(struct kloak_ct_write *w, struct kloak_ct_item *item, __u32 kind,
				     __u32 reason, struct peer *peer)
{
	struct kloak_event *e;

	if (kind == KLOAK_EVENT_TLS_BLOCKED)
		count_blocked(reason);
	e = event_reserve(kind, w->hook);
	if (!e)
		return;
	event_set_task(e, w->cgroup_id);
	e->reason = reason;
	e->secret_id = item->secret_id;
	e->offset = item->pt_off;
	e->fd = w->fd;
	e->strategy = KLOAK_STRATEGY_CIPHERTEXT;
	if (peer)
		event_set_peer(e, *peer);
	event_submit(e);
}

struct done_loop {
	struct kloak_ct_write *w;
};

static long done_step(__u64 index, void *data)
{
	struct kloak_ct_write *w = ((struct done_loop *)data)->w;
	struct kloak_ct_item *item;

	if (index >= w->count || index >= KLOAK_CT_MAX_ITEMS)
		return 1;
	item = &w->items[index & (KLOAK_CT_MAX_ITEMS - 1)];
	if (item->bound == 0)
		ct_event(w, item, KLOAK_EVENT_TLS_BLOCKED, KLOAK_REASON_RECORD_NOT_SEEN, NULL);
	return 0;
}

/* The TLS call returned: whatever was not bound to the wire went out as the placeholder (S4). */
static __always_inline void ct_write_done(__u32 tid)
{
	struct done_loop loop = { .w = bpf_map_lookup_elem(&ct_writes, &tid) };

	if (!loop.w)
		return;
	/* A callback per item: 6.1 loses track of ring-buffer records reserved in an unrolled loop. */
	bpf_loop(KLOAK_CT_MAX_ITEMS, done_step, &loop, 0);
	bpf_map_delete_elem(&ct_writes, &tid);
}

/* ---- 3. binding records to sequence numbers ---- */

/* The connection's key as its outgoing packets carry it. */
static __always_inline bool flow_key_of(struct sock *sk, struct kloak_flow_key *key)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	__builtin_memset(key, 0, sizeof(*key));
	if (family == AF_INET) {
		addr_from_v4(&key->saddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		addr_from_v4(&key->daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&key->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&key->daddr, sk, __sk_common.skc_v6_daddr);
	} else {
		return false;
	}
	key->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	key->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return true;
}

static __always_inline struct kloak_ct_flow *flow_for(struct kloak_flow_key *key)
{
	struct kloak_ct_flow *flow = bpf_map_lookup_elem(&ct_flows, key);
	__u32 zero = 0;

	if (flow)
		return flow;
	flow = bpf_map_lookup_elem(&ct_flow_zero, &zero);
	if (!flow || bpf_map_update_elem(&ct_flows, key, flow, BPF_NOEXIST))
		return bpf_map_lookup_elem(&ct_flows, key);
	return bpf_map_lookup_elem(&ct_flows, key);
}

struct slot_loop {
	struct kloak_ct_flow *flow;
	struct ct_scratch *s;
};

static long slot_find_step(__u64 index, void *data)
{
	struct slot_loop *l = data;

	if (l->flow->patches[index & (KLOAK_CT_MAX_PATCHES - 1)].state != KLOAK_PATCH_FREE)
		return 0;
	l->s->slot = (__u32)index;
	return 1;
}

static long slot_count_step(__u64 index, void *data)
{
	struct slot_loop *l = data;

	if (l->flow->patches[index & (KLOAK_CT_MAX_PATCHES - 1)].state == KLOAK_PATCH_FREE)
		l->s->free += 1;
	return 0;
}

/*
 * A free slot, marked filling; the caller counted enough free ones first.
 * The index travels through map memory: one state for the verifier, not
 * one per slot it could be.
 */
static __always_inline struct kloak_ct_patch *take_slot(struct ct_scratch *s, struct kloak_ct_flow *flow)
{
	struct slot_loop l = { .flow = flow, .s = s };
	struct kloak_ct_patch *p;

	s->slot = KLOAK_CT_MAX_PATCHES;
	bpf_loop(KLOAK_CT_MAX_PATCHES, slot_find_step, &l, 0);
	if (s->slot >= KLOAK_CT_MAX_PATCHES)
		return NULL;
	p = &flow->patches[s->slot & (KLOAK_CT_MAX_PATCHES - 1)];
	if (p->state != KLOAK_PATCH_FREE)
		return NULL;
	p->state = KLOAK_PATCH_FILLING;
	return p;
}

/* Fields first, then LIVE: TC only reads live slots. */
static __always_inline void publish(struct kloak_ct_patch *p)
{
	barrier();
	p->state = KLOAK_PATCH_LIVE;
}

/*
 * Every stage below is a bpf_loop callback with its counters in map memory:
 * the verifier then checks each small body once, instead of every path
 * through records times placeholders.
 */
struct bind_ctx {
	struct ct_scratch *s;
	struct kloak_ct_write *w;
	struct kloak_ct_session *sess;
	struct kloak_ct_flow *flow;
	struct kloak_secret *secret;
	struct peer *peer;
	const __u8 *buf;
	__u32 len;
	__u32 seq0;
	__u32 refusal;                           /* refuse_step's reason */
};

/* The item stage callbacks return 1 (stop) on NULL, before any use. */
static __always_inline struct kloak_ct_item *item_at(struct kloak_ct_write *w, __u64 index)
{
	__u64 i = index;

	barrier_var(i);
	if (i >= w->count || i >= KLOAK_CT_MAX_ITEMS)
		return NULL;
	return &w->items[i & (KLOAK_CT_MAX_ITEMS - 1)];
}

/*
 * One TLS record header of this socket write. Only whole headers at the
 * expected places count: anything else stops the parse and leaves the
 * remaining placeholders unbound (S4).
 */
static long record_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct ct_record *rec = &s->recs[index & (KLOAK_CT_MAX_RECORDS - 1)];
	__u32 off = s->parse_off, pt = s->covered, explicit = b->sess->tls13 ? 0 : TLS12_EXPLICIT_NONCE;
	__u32 rec_len, ct_len, data_len;
	__u8 head[5];

	if (index >= KLOAK_CT_MAX_RECORDS || off + 5 > b->len || pt >= b->w->total ||
	    bpf_probe_read_user(head, 5, b->buf + off))
		return 1;
	rec_len = ((__u32)head[3] << 8) | head[4];
	if (head[0] != TLS_APPLICATION_DATA || head[1] != 3 || head[2] != 3 || rec_len > TLS_RECORD_MAX ||
	    rec_len < TLS_TAG_LEN + explicit + 1)
		return 1;
	ct_len = rec_len - TLS_TAG_LEN - explicit;
	/* TLS 1.3 appends the inner content type; OpenSSL and BoringSSL add no padding unless asked. */
	data_len = b->sess->tls13 ? ct_len - 1 : ct_len;
	if (pt + data_len > b->w->total)
		return 1;
	rec->body_seq = b->seq0 + off + 5 + explicit;
	rec->pt_start = pt;
	rec->data_len = data_len;
	rec->ct_len = ct_len;
	s->nrec = (__u32)index + 1;
	s->covered = pt + data_len;
	s->parse_off = off + 5 + rec_len;
	return 0;
}

/* A placeholder that continues past the parsed records cannot be bound whole: it fails now (S4). */
static long crossing_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct kloak_ct_item *item = item_at(b->w, index);
	__u32 covered = b->s->covered;

	if (!item)
		return 1;
	if (item->bound == 0 && item->pt_off < covered && item->pt_off + item->len > covered) {
		item->bound = item->len + 1;
		ct_event(b->w, item, KLOAK_EVENT_TLS_BLOCKED, KLOAK_REASON_RECORD_MISMATCH, NULL);
	}
	return 0;
}

/* Placeholder i lies whole in the parsed records and is not bound yet. */
static __always_inline bool bindable(struct ct_scratch *s, struct kloak_ct_item *item)
{
	return item->bound == 0 && item->pt_off + item->len <= s->covered && item->pt_off >= s->first_pt;
}

/* Patch slots the write needs: one per (placeholder, record) part, one per record's tag. */
static long need_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct ct_record *rec = &s->recs[(index >> 4) & (KLOAK_CT_MAX_RECORDS - 1)];
	struct kloak_ct_item *item;
	__u32 rs = rec->pt_start, re = rs + rec->data_len;

	if ((index >> 4) >= s->nrec)
		return 1;
	if ((index & 15) == 0)
		s->rec_parts = 0;
	item = item_at(b->w, index & 15);
	if (!item)
		return 0;
	if (bindable(s, item) && item->pt_off < re && item->pt_off + item->len > rs) {
		s->need += 1 + (s->rec_parts == 0);   /* the first part of a record brings its tag */
		s->rec_parts += 1;
	}
	return 0;
}

/* This write's records cannot carry item `index`: it leaves as written, for b->refusal. */
static long refuse_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct kloak_ct_item *item = item_at(b->w, index);

	if (!item)
		return 1;
	if (bindable(b->s, item)) {
		item->bound = item->len + 1;
		ct_event(b->w, item, KLOAK_EVENT_TLS_BLOCKED, b->refusal, NULL);
	}
	return 0;
}

static long dbuf_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct kloak_secret *secret = b->secret;
	struct ct_scratch *s = b->s;
	__u32 o = (s->from + (__u32)index) & (KLOAK_MAX_SECRET - 1);

	if (!secret)
		return 1;
	s->dbuf[(s->lead + (__u32)index) & (DBUF_SIZE - 1)] = secret->value[o] ^ secret->placeholder[o];
	return 0;
}

/* Placeholder `index`'s part in record s->rec: its patch, and its share of the tag difference. */
static long bind_item_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct kloak_ct_item *item = item_at(b->w, index);
	__u32 start, end, rs = s->rec.pt_start, re = s->rec.pt_start + s->rec.data_len, from, to;
	struct kloak_ct_patch *p;

	if (!item)
		return 1;
	start = item->pt_off;
	end = start + item->len;
	if (!bindable(s, item) && !(item->bound > 0 && item->bound < item->len))
		return 0;
	if (end <= rs || start >= re)
		return 0;
	from = start > rs ? start : rs;
	to = end < re ? end : re;
	b->secret = bpf_map_lookup_elem(&secrets, &item->key);
	if (!b->secret)
		return 0;                /* removed since the write: fail closed (its bytes stay out of the tag) */
	p = take_slot(s, b->flow);
	if (!p || s->nparts >= KLOAK_CT_MAX_ITEMS)
		return 0;
	p->seq = s->rec.body_seq + (from - rs);
	p->len = to - from;
	p->sent = 0;
	p->secret_off = from - start;
	p->use_delta = 0;
	p->key = item->key;
	p->value_id = b->secret->value_id;
	publish(p);
	s->parts[s->nparts & (KLOAK_CT_MAX_ITEMS - 1)] = (struct ct_part){
		.key = item->key,
		.value_id = b->secret->value_id,
		.slot = s->slot,
		.secret_off = from - start,
		.ct_start = from - rs,
		.ct_end = to - rs,
	};
	s->nparts += 1;
	item->bound += to - from;
	if (item->bound == item->len) {
		count(KLOAK_CTR_CT_BOUND);
		ct_event(b->w, item, KLOAK_EVENT_TLS_REWRITTEN, KLOAK_REASON_NONE, b->peer);
	}
	return 0;
}

/*
 * One patched part's share of the record's tag difference. Apart from the
 * placement (bind_item_step): the frames of this chain of callbacks must fit
 * 512 bytes together.
 */
static long tag_part_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct ct_part *part;

	if (index >= s->nparts || index >= KLOAK_CT_MAX_ITEMS)
		return 1;
	part = &s->parts[index & (KLOAK_CT_MAX_ITEMS - 1)];
	b->secret = secret_value(&part->key, part->value_id);
	if (!b->secret) {
		/* Removed since it was placed: withdraw the patch, the record stays whole (S4). */
		b->flow->patches[part->slot & (KLOAK_CT_MAX_PATCHES - 1)].state = KLOAK_PATCH_FREE;
		return 0;
	}
	s->from = part->secret_off;
	s->lead = part->ct_start & 15;
	dbuf_open(s);
	bpf_loop(part->ct_end - part->ct_start, dbuf_step, b, 0);
	dbuf_close(s, part->ct_start, part->ct_end - part->ct_start);
	tag_add_part(s, b->sess, part->ct_start, part->ct_end);
	return 0;
}

/* Every queued placeholder in record `index`, then the record's tag patch. */
static long bind_record_step(__u64 index, void *data)
{
	struct bind_ctx *b = data;
	struct ct_scratch *s = b->s;
	struct kloak_ct_patch *p;
	struct gf128 delta;

	if (index >= s->nrec || index >= KLOAK_CT_MAX_RECORDS)
		return 1;
	s->rec = s->recs[index & (KLOAK_CT_MAX_RECORDS - 1)];
	s->nparts = 0;
	bpf_loop(KLOAK_CT_MAX_ITEMS, bind_item_step, b, 0);
	tag_begin(s);
	bpf_loop(KLOAK_CT_MAX_ITEMS, tag_part_step, b, 0);
	if (!s->has)
		return 0;
	delta = tag_finish(s, b->sess, s->rec.ct_len);
	p = take_slot(s, b->flow);
	if (!p)
		return 0;
	p->seq = s->rec.body_seq + s->rec.ct_len;
	p->len = TLS_TAG_LEN;
	p->sent = 0;
	p->secret_off = 0;
	p->use_delta = 1;
	__builtin_memset(&p->key, 0, sizeof(p->key));
	gf128_store(p->delta, delta);
	publish(p);
	return 0;
}

/*
 * A socket write by a thread inside a TLS write call that queued
 * placeholders for the ciphertext strategy.
 */
static __always_inline void ct_on_socket_write(__u32 tid, __u64 tls_ptr, int fd, const __u8 *buf, __u32 len)
{
	struct kloak_ct_write *w = bpf_map_lookup_elem(&ct_writes, &tid);
	struct kloak_conn_key skey = conn_key(tls_ptr);
	struct bind_ctx b = { .w = w, .buf = buf, .len = len };
	struct slot_loop slots;
	struct sock *sk;

	if (!w || w->tls_ptr != tls_ptr || !w->count || w->fd != fd || !buf)
		return;
	b.sess = bpf_map_lookup_elem(&ct_sessions, &skey);
	b.s = ct_scratch();
	sk = tcp_sock_of_fd(fd);
	if (!b.sess || !b.s || !sk || !flow_key_of(sk, &b.s->fkey))
		return;
	b.seq0 = BPF_CORE_READ((struct tcp_sock *)sk, write_seq);
	b.s->nrec = 0;
	b.s->parse_off = 0;
	b.s->covered = w->pt_done;
	b.s->first_pt = w->pt_done;
	bpf_loop(KLOAK_CT_MAX_RECORDS, record_step, &b, 0);
	if (!b.s->nrec)
		return;
	bpf_loop(KLOAK_CT_MAX_ITEMS, crossing_step, &b, 0);
	/* The socket, not the thread, says where the packets go. */
	if (!netns_wired(sock_netns(sk))) {
		w->pt_done = b.s->covered;
		b.refusal = KLOAK_REASON_WIRE_UNAVAILABLE;
		bpf_loop(KLOAK_CT_MAX_ITEMS, refuse_step, &b, 0);
		return;
	}
	b.flow = flow_for(&b.s->fkey);
	if (!b.flow)
		return;
	b.s->need = 0;
	bpf_loop(KLOAK_CT_MAX_RECORDS * KLOAK_CT_MAX_ITEMS, need_step, &b, 0);
	slots.flow = b.flow;
	slots.s = b.s;
	b.s->free = 0;
	bpf_loop(KLOAK_CT_MAX_PATCHES, slot_count_step, &slots, 0);
	w->pt_done = b.s->covered;
	if (b.s->need > b.s->free) {
		b.refusal = KLOAK_REASON_PATCH_TABLE_FULL;
		bpf_loop(KLOAK_CT_MAX_ITEMS, refuse_step, &b, 0);
		return;
	}
	if (peer_of_fd(fd, &b.s->peer))
		b.peer = &b.s->peer;
	bpf_loop(KLOAK_CT_MAX_RECORDS, bind_record_step, &b, 0);
}

#endif
