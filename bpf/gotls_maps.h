/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps of Go crypto/tls key capture and write tracking (gotls.bpf.h). */
#ifndef KLOAK_GOTLS_MAPS_H
#define KLOAK_GOTLS_MAPS_H

#include "kloak.h"

/*
 * (tgid, goroutine) -> the thread a ciphertext-strategy Write started on: its
 * tls_calls entry lets that thread's socket writes bind records, and is
 * ended at Write's RETs even when the goroutine came back on another thread.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_conn_key);
	__type(value, __u32);
} go_write_threads SEC(".maps");

/* (tgid, goroutine) -> Conn whose handshake that goroutine runs. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_conn_key);
	__type(value, __u64);
} go_handshakes SEC(".maps");

/* (tgid, write halfConn) -> its Conn. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_conn_key);
	__type(value, __u64);
} go_write_halves SEC(".maps");

/* (tgid, goroutine) -> Conn whose AES-GCM write key that goroutine is making. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct kloak_conn_key);
	__type(value, __u64);
} go_key_pending SEC(".maps");

#endif
