/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The ciphertext strategy on the wire: every segment that carries bytes of a
 * live patch gets them XORed in, the original and every retransmission alike
 * (the socket's queue keeps the placeholder: TCP retransmits from there). A
 * patch lives until the peer acknowledges its last byte, or the connection
 * closes.
 *
 * handle_ct_patch runs where the workload's packets leave (host egress and
 * loopback for `kloak run`; the host side of a pod's interface, ingress, on
 * Kubernetes, where the pod cannot see the result); handle_ct_ack runs
 * where the peer's acknowledgements arrive. Both release acknowledged
 * patches, so either direction's hook suffices for that.
 */
#ifndef KLOAK_TC_BPF_H
#define KLOAK_TC_BPF_H

#include "kloak.h"
#include "maps.bpf.h"
#include "common.bpf.h"
#include "cipher_maps.h"
#include "tc_maps.h"

#define TC_ACT_UNSPEC (-1)            /* no verdict: the next filter (a CNI's, say) still runs */
#define ETH_HLEN 14
#define TCP_FLAG_ACK 0x10
#define IP_FRAG_MASK 0x3fff
#define TCP_CLOSE 7

struct tcp_packet {
	struct kloak_flow_key key;
	__u32 seq;
	__u32 ack;
	__u32 l4_off;
	__u32 payload_off;
	__u32 payload_len;
	__u8 flags;
};

/* l3: where the IP header starts (ETH_HLEN, or 0 on devices without a link-layer header). */
static __always_inline bool parse_tcp(struct __sk_buff *skb, __u32 l3, struct tcp_packet *p)
{
	__u32 l3_end;
	struct tcphdr tcp;
	__u8 flags;

	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) || ip.protocol != IPPROTO_TCP ||
		    (bpf_ntohs(ip.frag_off) & IP_FRAG_MASK) || ip.ihl < 5)
			return false;
		addr_from_v4(&p->key.saddr, ip.saddr);
		addr_from_v4(&p->key.daddr, ip.daddr);
		p->l4_off = l3 + ip.ihl * 4;
		l3_end = l3 + bpf_ntohs(ip.tot_len);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_TCP)
			return false;
		__builtin_memcpy(&p->key.saddr, &ip6.saddr, 16);
		__builtin_memcpy(&p->key.daddr, &ip6.daddr, 16);
		p->l4_off = l3 + sizeof(ip6);
		l3_end = p->l4_off + bpf_ntohs(ip6.payload_len);
	} else {
		return false;
	}
	if (bpf_skb_load_bytes(skb, p->l4_off, &tcp, sizeof(tcp)) || tcp.doff < 5)
		return false;
	/* GSO super-packets carry no meaningful length field: the skb's is the truth then. */
	if (l3_end > skb->len || l3_end <= p->l4_off)
		l3_end = skb->len;
	p->key.sport = bpf_ntohs(tcp.source);
	p->key.dport = bpf_ntohs(tcp.dest);
	p->seq = bpf_ntohl(tcp.seq);
	p->ack = bpf_ntohl(tcp.ack_seq);
	if (bpf_skb_load_bytes(skb, p->l4_off + 13, &flags, 1))
		return false;
	p->flags = flags;
	p->payload_off = p->l4_off + tcp.doff * 4;
	p->payload_len = l3_end > p->payload_off ? l3_end - p->payload_off : 0;
	return true;
}

static __always_inline bool seq_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

/* The peer acknowledged everything before ack: those patches are done. */
static __always_inline void release_acked(struct kloak_ct_flow *flow, __u32 ack)
{
	for (__u32 i = 0; i < KLOAK_CT_MAX_PATCHES; i++) {
		struct kloak_ct_patch *p = &flow->patches[i];

		if (p->state == KLOAK_PATCH_LIVE && !seq_before(ack, p->seq + p->len)) {
			p->state = KLOAK_PATCH_FREE;
			count(KLOAK_CTR_CT_ACKED);
		}
	}
}

static __always_inline void on_ack(struct tcp_packet *pkt)
{
	struct kloak_flow_key back = {
		.saddr = pkt->key.daddr,
		.daddr = pkt->key.saddr,
		.sport = pkt->key.dport,
		.dport = pkt->key.sport,
	};
	struct kloak_ct_flow *flow;

	if (!(pkt->flags & TCP_FLAG_ACK))
		return;
	flow = bpf_map_lookup_elem(&ct_flows, &back);
	if (flow)
		release_acked(flow, pkt->ack);
}

struct patch_loop {
	struct __sk_buff *skb;
	struct kloak_ct_patch *patch;
	struct kloak_secret *secret;
	__u32 pkt_off;                   /* where the overlap starts in the packet */
	__u32 patch_off;                 /* ... and in the patch */
	__u32 len;
	__u32 l4_off;
	__u64 csum;                      /* one's-complement sum of the checksum changes */
	__u32 failed;
	struct patch_bufs *buf;
};

static __always_inline __u32 csum_fold16(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u32)((sum & 0xffff) + (sum >> 16)) & 0xffff;
}

/* One chunk of up to 64 bytes: load, XOR, store, and account the checksum change. */
static long patch_chunk_step(__u64 index, void *data)
{
	struct patch_loop *l = data;
	struct kloak_ct_patch *p = l->patch;
	struct kloak_secret *secret = l->secret;
	struct patch_bufs *b = l->buf;
	__u32 done = (__u32)index * PATCH_CHUNK, n, at, from;
	__s64 diff;
	__u32 d16;

	if (done >= l->len || !b || !p || (!p->use_delta && !secret))
		return 1;
	n = l->len - done;
	if (n > PATCH_CHUNK)
		n = PATCH_CHUNK;
	/* 1..64 by construction: 6.1's verifier needs the lower bound in the arithmetic itself. */
	barrier_var(n);
	n = ((n - 1) & (PATCH_CHUNK - 1)) + 1;
	at = l->pkt_off + done;
	from = l->patch_off + done;
	__builtin_memset(b->old, 0, sizeof(b->old));
	if (bpf_skb_load_bytes(l->skb, at, b->old, n)) {
		l->failed = 1;
		return 1;
	}
	/* The XOR bytes first, one loop per source: no branch per byte. */
	if (secret) {
		for (__u32 i = 0; i < PATCH_CHUNK; i++) {
			__u32 o = (p->secret_off + from + i) & (KLOAK_MAX_SECRET - 1);

			b->new[i] = secret->value[o] ^ secret->placeholder[o];
		}
	} else {
		for (__u32 i = 0; i < PATCH_CHUNK; i++)
			b->new[i] = p->delta[(from + i) & 15];
	}
	/* Bytes past n stay as loaded (zero), so the checksum difference covers n bytes only. */
	for (__u32 w = 0; w < PATCH_CHUNK / 8; w++) {
		__u32 left = n > w * 8 ? n - w * 8 : 0;
		__u64 mask = left >= 8 ? ~0ULL : (1ULL << ((left & 7) * 8)) - 1;

		*(__u64 *)&b->new[w * 8] = *(__u64 *)&b->old[w * 8] ^ (*(__u64 *)&b->new[w * 8] & mask);
	}
	diff = bpf_csum_diff((__be32 *)b->old, PATCH_CHUNK, (__be32 *)b->new, PATCH_CHUNK, 0);
	if (diff < 0) {
		l->failed = 1;
		return 1;
	}
	d16 = csum_fold16((__u64)diff);
	/* Bytes at odd offsets from the TCP header sit in the low half of each 16-bit word. */
	if ((at - l->l4_off) & 1)
		d16 = ((d16 & 0xff) << 8) | (d16 >> 8);
	l->csum += d16;
	if (bpf_skb_store_bytes(l->skb, at, b->new, n, 0)) {
		l->failed = 1;
		return 1;
	}
	return 0;
}

struct flow_loop {
	struct __sk_buff *skb;
	struct kloak_ct_flow *flow;
	struct tcp_packet *pkt;
	struct patch_loop *chunk;
	__u32 patched;
};

/* Applies slot `index` where it overlaps this segment. */
static long patch_slot_step(__u64 index, void *data)
{
	struct flow_loop *f = data;
	struct tcp_packet *pkt = f->pkt;
	struct patch_loop *l = f->chunk;
	struct kloak_ct_patch *p;
	__u32 start, end, pend;

	if (index >= KLOAK_CT_MAX_PATCHES)
		return 1;
	p = &f->flow->patches[index & (KLOAK_CT_MAX_PATCHES - 1)];
	if (p->state != KLOAK_PATCH_LIVE)
		return 0;
	pend = pkt->seq + pkt->payload_len;
	if (!seq_before(p->seq, pend) || !seq_before(pkt->seq, p->seq + p->len))
		return 0;
	start = seq_before(p->seq, pkt->seq) ? pkt->seq : p->seq;
	end = seq_before(p->seq + p->len, pend) ? p->seq + p->len : pend;
	l->secret = NULL;
	if (!p->use_delta) {
		/* The value the tag difference was computed with, even if replaced since. */
		l->secret = secret_value(&p->key, p->value_id);
		if (!l->secret) {
			count(KLOAK_CTR_CT_VALUE_GONE);
			return 0;        /* fail closed */
		}
	}
	l->patch = p;
	l->pkt_off = pkt->payload_off + (start - pkt->seq);
	l->patch_off = start - p->seq;
	l->len = end - start;
	bpf_loop((l->len + PATCH_CHUNK - 1) / PATCH_CHUNK, patch_chunk_step, l, 0);
	if (p->sent++)
		count(KLOAK_CTR_CT_RETRANSMITS);
	f->patched = 1;
	return 0;
}

static __always_inline void patch_segment(struct __sk_buff *skb, struct tcp_packet *pkt)
{
	struct kloak_ct_flow *flow = bpf_map_lookup_elem(&ct_flows, &pkt->key);
	struct patch_loop chunk = { .skb = skb, .l4_off = pkt->l4_off };
	struct flow_loop f = { .skb = skb, .flow = flow, .pkt = pkt, .chunk = &chunk };
	__u32 zero = 0;

	if (!flow || !pkt->payload_len)
		return;
	chunk.buf = bpf_map_lookup_elem(&patch_buf, &zero);
	if (!chunk.buf)
		return;
	bpf_loop(KLOAK_CT_MAX_PATCHES, patch_slot_step, &f, 0);
	if (!f.patched)
		return;
	count(KLOAK_CTR_CT_SEGMENTS);
	/* Size 0: the last argument is a difference (a no-op for checksums left to the device). */
	if (chunk.failed || bpf_l4_csum_replace(skb, pkt->l4_off + 16, 0, csum_fold16(chunk.csum), 0))
		count(KLOAK_CTR_CT_FAILED);
}

static __always_inline int ct_patch(struct __sk_buff *skb, __u32 l3)
{
	struct tcp_packet pkt;

	if (!parse_tcp(skb, l3, &pkt))
		return TC_ACT_UNSPEC;
	patch_segment(skb, &pkt);
	on_ack(&pkt);
	return TC_ACT_UNSPEC;
}

static __always_inline int ct_ack(struct __sk_buff *skb, __u32 l3)
{
	struct tcp_packet pkt;

	if (parse_tcp(skb, l3, &pkt))
		on_ack(&pkt);
	return TC_ACT_UNSPEC;
}

/*
 * One pair per link-layer framing, chosen by the loader from the device's
 * type: Ethernet-framed devices (and loopback) put 14 bytes before the IP
 * header, layer-3 devices (WireGuard, tun, IP tunnels) none.
 */
SEC("tc")
int handle_ct_patch(struct __sk_buff *skb)
{
	return ct_patch(skb, ETH_HLEN);
}

SEC("tc")
int handle_ct_ack(struct __sk_buff *skb)
{
	return ct_ack(skb, ETH_HLEN);
}

SEC("tc")
int handle_ct_patch_l3(struct __sk_buff *skb)
{
	return ct_patch(skb, 0);
}

SEC("tc")
int handle_ct_ack_l3(struct __sk_buff *skb)
{
	return ct_ack(skb, 0);
}

/* A connection ended: its patches can never be sent again. */
SEC("tracepoint/sock/inet_sock_set_state")
int handle_ct_close(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct kloak_flow_key key = {};

	if (ctx->newstate != TCP_CLOSE || ctx->protocol != IPPROTO_TCP)
		return 0;
	/* Copied by helper: the context only allows loads at constant offsets. */
	if (ctx->family == AF_INET) {
		__u32 s = 0, d = 0;

		bpf_probe_read_kernel(&s, 4, ctx->saddr);
		bpf_probe_read_kernel(&d, 4, ctx->daddr);
		addr_from_v4(&key.saddr, s);
		addr_from_v4(&key.daddr, d);
	} else {
		bpf_probe_read_kernel(&key.saddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(&key.daddr, 16, ctx->daddr_v6);
	}
	key.sport = ctx->sport;
	key.dport = ctx->dport;
	bpf_map_delete_elem(&ct_flows, &key);
	return 0;
}

#endif
