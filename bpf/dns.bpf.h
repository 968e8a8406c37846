/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * S3: DNS answers captured with cgroup socket-buffer programs (no kprobes
 * needed). An answer counts only when it comes from a trusted resolver and
 * answers a query that really left; a workload sending DNS answers itself has
 * them dropped at egress.
 */
#ifndef KLOAK_DNS_BPF_H
#define KLOAK_DNS_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "dns_maps.h"
#include "common.bpf.h"
#include "events.bpf.h"
#include "names_maps.h"
#include "names.bpf.h"

#define DNS_PORT 53
#define DNS_HDR_LEN 12
#define DNS_MAX_ANSWERS 16
#define DNS_TYPE_A 1
#define DNS_TYPE_AAAA 28
#define DNS_QR 0x8000

struct udp_view {
	struct kloak_addr src;
	struct kloak_addr dst;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u32 payload;                   /* offset of the UDP payload in the skb */
	__u32 end;
};

struct dns_hdr {
	__u16 id;
	__u16 flags;
	__u16 qdcount;
	__u16 ancount;
	__u16 nscount;
	__u16 arcount;
};

/* bpf_loop hands callbacks a stack pointer only: the map value travels inside. */
struct dns_loop {
	struct dns_ctx *d;
	struct __sk_buff *skb;
};

static __always_inline bool udp_parse(struct __sk_buff *skb, struct udp_view *v)
{
	struct udphdr udp;
	__u32 off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || ip.protocol != IPPROTO_UDP)
			return false;
		if (ip.frag_off & bpf_htons(0x3fff))
			return false;
		off = ip.ihl * 4;
		addr_from_v4(&v->src, ip.saddr);
		addr_from_v4(&v->dst, ip.daddr);
		v->family = AF_INET;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_UDP)
			return false;
		off = sizeof(ip6);
		__builtin_memcpy(&v->src, &ip6.saddr, 16);
		__builtin_memcpy(&v->dst, &ip6.daddr, 16);
		v->family = AF_INET6;
	} else {
		return false;
	}
	if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)))
		return false;
	v->sport = bpf_ntohs(udp.source);
	v->dport = bpf_ntohs(udp.dest);
	v->payload = off + sizeof(udp);
	v->end = skb->len;
	return v->end >= v->payload + DNS_HDR_LEN;
}

static __always_inline bool is_resolver(struct kloak_addr *addr, __u16 port)
{
	struct kloak_resolver_key key = { .port = port };

	__builtin_memcpy(&key.addr, addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&resolvers, &key) != NULL;
}

static __always_inline void dns_event(struct dns_ctx *d, __u32 kind, __u32 reason,
				      struct kloak_addr *addr, __u32 ttl, __u32 host_id)
{
	struct kloak_event *e = event_reserve(kind, KLOAK_HOOK_DNS);

	if (!e)
		return;
	e->reason = reason;
	e->cgroup_id = d->cgroup_id;
	e->ttl = ttl;
	e->host_id = host_id;
	e->family = d->family;
	if (addr)
		__builtin_memcpy(&e->addr, addr, sizeof(e->addr));
	event_submit(e);
}

/* One byte of the question name: label lengths become dots, letters lower case. */
static long qname_step(__u64 index, void *data)
{
	struct dns_ctx *d = ((struct dns_loop *)data)->d;
	struct name_ctx *n;
	__u32 slot = NAME_SLOT_SOFTIRQ;
	__u32 pos = d->pos;
	__u8 c;

	n = bpf_map_lookup_elem(&name_buf, &slot);
	if (!n || pos >= KLOAK_NAME_MAX)
		return 1;
	c = d->raw[pos];
	d->pos = pos + 1;
	if (d->label_left == 0) {
		if (c == 0) {
			d->done = 1;
			return 1;
		}
		if (c & 0xc0)
			return 1;        /* compression in a question: not parsed */
		d->label_left = c;
		if (n->len > 0) {
			if (n->len >= KLOAK_NAME_MAX)
				return 1;
			n->name[n->len & (KLOAK_NAME_MAX - 1)] = '.';
			n->len++;
		}
		return 0;
	}
	if (c >= 'A' && c <= 'Z')
		c += 'a' - 'A';
	if (n->len >= KLOAK_NAME_MAX)
		return 1;
	n->name[n->len & (KLOAK_NAME_MAX - 1)] = c;
	n->len++;
	d->label_left--;
	return 0;
}

/* Skips a (possibly compressed) owner name at d->cur. */
static __always_inline bool skip_name(struct __sk_buff *skb, struct dns_ctx *d)
{
	for (int i = 0; i < 64; i++) {
		__u8 len;

		if (bpf_skb_load_bytes(skb, d->cur, &len, 1))
			return false;
		if ((len & 0xc0) == 0xc0) {
			d->cur += 2;
			return true;
		}
		d->cur += 1 + len;
		if (len == 0)
			return true;
	}
	return false;
}

/* One answer record: A and AAAA verify (address, host) for their TTL. */
static long answer_step(__u64 index, void *data)
{
	struct dns_ctx *d = ((struct dns_loop *)data)->d;
	struct __sk_buff *skb = ((struct dns_loop *)data)->skb;
	struct name_ctx *n;
	__u32 slot = NAME_SLOT_SOFTIRQ;
	struct {
		__u16 type;
		__u16 class;
		__u32 ttl;
		__u16 rdlen;
	} __attribute__((packed)) rr;
	struct kloak_verified_key key = {};
	struct kloak_verified value;
	__u16 type, rdlen;
	__u32 ttl;

	n = bpf_map_lookup_elem(&name_buf, &slot);
	if (!n || !skip_name(skb, d) || bpf_skb_load_bytes(skb, d->cur, &rr, sizeof(rr)))
		return 1;
	d->cur += sizeof(rr);
	type = bpf_ntohs(rr.type);
	rdlen = bpf_ntohs(rr.rdlen);
	ttl = bpf_ntohl(rr.ttl);
	if (type == DNS_TYPE_A && rdlen == 4) {
		__u32 v4;

		if (bpf_skb_load_bytes(skb, d->cur, &v4, 4))
			return 1;
		addr_from_v4(&key.addr, v4);
	} else if (type == DNS_TYPE_AAAA && rdlen == 16) {
		if (bpf_skb_load_bytes(skb, d->cur, &key.addr, 16))
			return 1;
	} else {
		d->cur += rdlen;
		return 0;
	}
	d->cur += rdlen;
	count(KLOAK_CTR_DNS_RECORDS);
	if (ttl == 0) {
		/* TTL 0 means "do not cache": nothing to verify later. */
		dns_event(d, KLOAK_EVENT_DNS_REJECTED, KLOAK_REASON_DNS_TTL_ZERO, &key.addr, 0, 0);
		return 0;
	}
	value.expires_ns = d->now + (__u64)ttl * 1000000000ULL;
	for (__u32 i = 0; i < KLOAK_MAX_HOSTS; i++) {
		if (i >= n->match.count)
			break;
		key.host_id = n->match.ids[i & (KLOAK_MAX_HOSTS - 1)];
		bpf_map_update_elem(&verified, &key, &value, BPF_ANY);
		dns_event(d, KLOAK_EVENT_DNS_ACCEPTED, KLOAK_REASON_NONE, &key.addr, ttl, key.host_id);
	}
	return 0;
}

static __always_inline void dns_answer(struct __sk_buff *skb, struct udp_view *v)
{
	struct kloak_dns_query_key query = {};
	struct dns_hdr hdr;
	struct name_ctx *n;
	struct dns_ctx *d;
	struct dns_loop loop;
	__u32 zero = 0, slot = NAME_SLOT_SOFTIRQ, avail;

	if (bpf_skb_load_bytes(skb, v->payload, &hdr, sizeof(hdr)))
		return;
	if (!(bpf_ntohs(hdr.flags) & DNS_QR) || (bpf_ntohs(hdr.flags) & 0xf) != 0 ||
	    bpf_ntohs(hdr.qdcount) != 1)
		return;
	d = bpf_map_lookup_elem(&dns_buf, &zero);
	n = bpf_map_lookup_elem(&name_buf, &slot);
	if (!d || !n)
		return;
	loop.d = d;
	loop.skb = skb;
	d->now = bpf_ktime_get_boot_ns();
	d->cgroup_id = bpf_skb_cgroup_id(skb);
	d->family = v->family;
	d->pos = 0;
	d->label_left = 0;
	d->done = 0;
	n->len = 0;
	if (v->end < v->payload + DNS_HDR_LEN + 5)
		return;
	avail = v->end - (v->payload + DNS_HDR_LEN);
	if (avail > KLOAK_NAME_MAX)
		avail = KLOAK_NAME_MAX;
	barrier_var(avail);
	avail &= KLOAK_NAME_MAX * 2 - 1;
	if (avail < 5 || bpf_skb_load_bytes(skb, v->payload + DNS_HDR_LEN, d->raw, avail))
		return;
	bpf_loop(KLOAK_NAME_MAX, qname_step, &loop, 0);
	if (!d->done)
		return;
	name_match_all(n);
	if (n->match.count == 0)
		return;                  /* not a name any secret cares about */
	count(KLOAK_CTR_DNS_ANSWERS);
	if (!is_resolver(&v->src, v->sport)) {
		dns_event(d, KLOAK_EVENT_DNS_REJECTED, KLOAK_REASON_DNS_UNTRUSTED_SOURCE, &v->src, 0, 0);
		return;
	}
	__builtin_memcpy(&query.resolver, &v->src, sizeof(query.resolver));
	query.resolver_port = v->sport;
	query.client_port = v->dport;
	query.txid = bpf_ntohs(hdr.id);
	if (bpf_map_delete_elem(&dns_queries, &query)) {
		dns_event(d, KLOAK_EVENT_DNS_REJECTED, KLOAK_REASON_DNS_NO_QUERY, &v->src, 0, 0);
		return;
	}
	d->cur = v->payload + DNS_HDR_LEN + d->pos + 4;
	bpf_loop(DNS_MAX_ANSWERS < bpf_ntohs(hdr.ancount) ? DNS_MAX_ANSWERS : bpf_ntohs(hdr.ancount),
		 answer_step, &loop, 0);
}

SEC("cgroup_skb/ingress")
int handle_dns_ingress(struct __sk_buff *skb)
{
	struct udp_view v = {};

	if (udp_parse(skb, &v))
		dns_answer(skb, &v);
	return 1;
}

SEC("cgroup_skb/egress")
int handle_dns_egress(struct __sk_buff *skb)
{
	struct kloak_dns_query_key query = {};
	struct udp_view v = {};
	struct dns_hdr hdr;
	__u64 cgroup_id, now;

	if (!udp_parse(skb, &v) || bpf_skb_load_bytes(skb, v.payload, &hdr, sizeof(hdr)))
		return 1;
	cgroup_id = bpf_skb_cgroup_id(skb);
	if (bpf_map_lookup_elem(&cgroups, &cgroup_id) &&
	    (is_resolver(&v.src, v.sport) ||
	     (v.sport == DNS_PORT && (bpf_ntohs(hdr.flags) & DNS_QR)))) {
		/* A protected workload speaking as a DNS server: never let it through. */
		struct kloak_event *e;

		count(KLOAK_CTR_DNS_FORGED_DROPPED);
		e = event_reserve(KLOAK_EVENT_DNS_REJECTED, KLOAK_HOOK_DNS);
		if (e) {
			e->reason = KLOAK_REASON_DNS_FORGED_BY_WORKLOAD;
			e->cgroup_id = cgroup_id;
			e->port = v.dport;
			e->family = v.family;
			__builtin_memcpy(&e->addr, &v.dst, sizeof(e->addr));
			event_submit(e);
		}
		return 0;
	}
	if ((bpf_ntohs(hdr.flags) & DNS_QR) || !is_resolver(&v.dst, v.dport))
		return 1;
	__builtin_memcpy(&query.resolver, &v.dst, sizeof(query.resolver));
	query.resolver_port = v.dport;
	query.client_port = v.sport;
	query.txid = bpf_ntohs(hdr.id);
	now = bpf_ktime_get_boot_ns();
	bpf_map_update_elem(&dns_queries, &query, &now, BPF_ANY);
	count(KLOAK_CTR_DNS_QUERIES);
	return 1;
}

#endif
