/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps of the DNS stage (dns.bpf.h, S3): trusted resolvers, queries in flight, the answer being parsed. */
#ifndef KLOAK_DNS_MAPS_H
#define KLOAK_DNS_MAPS_H

#include "kloak.h"

/* Trusted DNS resolvers (address and port). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct kloak_resolver_key);
	__type(value, __u8);
} resolvers SEC(".maps");

/* Outstanding queries to trusted resolvers, by (resolver, ports, txid). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_dns_query_key);
	__type(value, __u64);
} dns_queries SEC(".maps");

/* Per-CPU state of one answer being parsed (softirq: never preempted by itself). */
struct dns_ctx {
	__u32 cur;
	__u32 end;
	__u32 pos;
	__u32 label_left;
	__u32 done;
	__u64 now;
	__u64 cgroup_id;
	__u8 raw[KLOAK_NAME_MAX * 2];
	struct kloak_addr resolver;
	__u16 resolver_port;
	__u16 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_ctx);
} dns_buf SEC(".maps");

#endif
