// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Test only: forced loss without netem (this kernel has none). Drops the first
 * copy of every TCP segment to cfg_port whose payload starts with a TLS
 * application-data record header, and lets every later copy (the
 * retransmission) through, so a test can prove that retransmitted records are
 * patched the same way as the first copy. Loaded by src/bin/kloak-drop-first.rs.
 *
 * Hold mode (cfg_hold) drops every copy instead, until userspace opens the
 * gate: records stay in flight for as long as a test needs (a rotation of the
 * secret they were bound to, say), then retransmissions get through.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dropfirst.h"

char LICENSE[] SEC("license") = "GPL";

/* Not in BTF: the UAPI defines them as macros. */
#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* Destination port of the segments to drop (host byte order); set before load. */
const volatile __u16 cfg_port = 8443;
/* Stop dropping after this many first copies; 0: never stop. */
const volatile __u64 cfg_max_drops = 0;
/* Drop every copy while df_gate[0] is 0. */
const volatile bool cfg_hold = false;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} df_gate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KLOAK_DF_MAX);
	__type(key, __u32);
	__type(value, __u64);
} df_counters SEC(".maps");

/*
 * Segments already seen once. LRU: a long run forgets old segments instead of
 * failing to insert (a forgotten one would only be dropped a second time).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct kloak_df_key);
	__type(value, __u8);
} df_seen SEC(".maps");

static __always_inline void df_add(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&df_counters, &slot);

	/* Atomic: both CPUs may run this program at once. */
	if (value)
		__sync_fetch_and_add(value, 1);
}

/* Counts one drop unless cfg_max_drops were already made; true when counted. */
static __always_inline bool df_take_drop(void)
{
	__u32 slot = KLOAK_DF_DROPPED;
	__u64 *dropped = bpf_map_lookup_elem(&df_counters, &slot);

	if (!dropped)
		return false;
	/* Reserve first, give back when over: exact even with two CPUs racing. */
	if (__sync_fetch_and_add(dropped, 1) < cfg_max_drops || !cfg_max_drops)
		return true;
	__sync_fetch_and_add(dropped, -1);
	return false;
}

/*
 * Fills the addresses of KEY and returns the offset of the TCP header, or -1
 * when the frame is not an unfragmented TCP segment. *ip_payload is what the
 * IP header says follows it (0: unknown, e.g. IPv4 BIG TCP or an IPv6 jumbogram).
 */
static __always_inline int df_parse_ip(struct __sk_buff *skb, struct kloak_df_key *key, __u32 *ip_payload)
{
	__u16 proto;

	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)))
		return -1;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u32 hlen;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.protocol != IPPROTO_TCP)
			return -1;
		/* A fragment carries no (or only part of a) TCP header. */
		if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return -1;
		hlen = ip.ihl * 4;
		if (hlen < sizeof(ip))
			return -1;
		__builtin_memcpy(key->saddr, &ip.saddr, 4);
		__builtin_memcpy(key->daddr, &ip.daddr, 4);
		key->family = 4;
		*ip_payload = bpf_ntohs(ip.tot_len) > hlen ? bpf_ntohs(ip.tot_len) - hlen : 0;
		return ETH_HLEN + hlen;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		/* Extension headers are not followed: the tests' traffic has none. */
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_TCP)
			return -1;
		__builtin_memcpy(key->saddr, &ip6.saddr, 16);
		__builtin_memcpy(key->daddr, &ip6.daddr, 16);
		key->family = 6;
		*ip_payload = bpf_ntohs(ip6.payload_len);
		return ETH_HLEN + sizeof(ip6);
	}
	return -1;
}

/*
 * Everything not dropped returns TC_ACT_UNSPEC, not TC_ACT_OK: OK would end the
 * hook's filter chain, and the program under test may sit behind this one.
 */
SEC("tc")
int handle_tc(struct __sk_buff *skb)
{
	struct kloak_df_key key = {};
	__u32 ip_payload = 0, payload, tcp_hlen;
	__u8 record[3], one = 1;
	struct tcphdr tcp;
	int l4;

	l4 = df_parse_ip(skb, &key, &ip_payload);
	if (l4 < 0 || bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)))
		return TC_ACT_UNSPEC;
	if (tcp.dest != bpf_htons(cfg_port))
		return TC_ACT_UNSPEC;
	tcp_hlen = tcp.doff * 4;
	/* Without a length in the IP header the frame ends where the skb does. */
	payload = ip_payload ? ip_payload : skb->len - l4;
	/* At least a TLS record header (5 bytes) after the TCP header. */
	if (tcp_hlen < sizeof(tcp) || payload < tcp_hlen + 5)
		return TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, l4 + tcp_hlen, record, sizeof(record)))
		return TC_ACT_UNSPEC;
	/* TLS 1.2 and 1.3 application data (TLS 1.3 hides every record type behind this one). */
	if (record[0] != 0x17 || record[1] != 0x03 || record[2] != 0x03)
		return TC_ACT_UNSPEC;

	if (cfg_hold) {
		__u32 zero = 0, *open = bpf_map_lookup_elem(&df_gate, &zero);

		if (open && *open) {
			df_add(KLOAK_DF_PASSED);
			return TC_ACT_UNSPEC;
		}
		df_add(KLOAK_DF_DROPPED);
		return TC_ACT_SHOT;
	}
	key.sport = tcp.source;
	key.dport = tcp.dest;
	key.seq = tcp.seq;
	/*
	 * BPF_NOEXIST: of two copies racing on two CPUs, exactly one is "first".
	 * Any failure to insert lets the copy pass: loss is only ever deliberate.
	 */
	if (bpf_map_update_elem(&df_seen, &key, &one, BPF_NOEXIST)) {
		df_add(KLOAK_DF_PASSED);
		return TC_ACT_UNSPEC;
	}
	if (!df_take_drop()) {
		/* Over the limit: this copy and its retransmissions pass. */
		df_add(KLOAK_DF_PASSED);
		return TC_ACT_UNSPEC;
	}
	return TC_ACT_SHOT;
}

/* Keep the boundary types in BTF so the Rust side is generated from them. */
struct kloak_df_key kloak_df_key_ = {};
enum kloak_df_counter kloak_df_counter_ = 0;
