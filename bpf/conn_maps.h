/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps of the attribution stage (conn.bpf.h, S2) alone; `conns` itself is shared (maps.bpf.h). */
#ifndef KLOAK_CONN_MAPS_H
#define KLOAK_CONN_MAPS_H

/*
 * Memory-BIO runtimes (Node.js, Python asyncio) encrypt into a buffer and
 * send it after the TLS call returns: the TLS object a thread last used
 * without a known socket, until that thread's next TCP write.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} bio_pending SEC(".maps");

#endif
