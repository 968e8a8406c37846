/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The test-only segment dropper's boundary (bpf/dropfirst.bpf.c,
 * src/bin/kloak-drop-first.rs). Rust gets these from the skeleton's BTF.
 */
#ifndef KLOAK_DROPFIRST_H
#define KLOAK_DROPFIRST_H

/* Slots of the df_counters array. */
enum kloak_df_counter {
	KLOAK_DF_DROPPED = 0,            /* first copies dropped (hold mode: every copy) */
	KLOAK_DF_PASSED = 1,             /* matching segments let through: later copies, or past cfg_max_drops */
	KLOAK_DF_MAX = 2,
};

/* One TCP segment of one connection: the same key again is a retransmission. */
struct kloak_df_key {
	__u8 saddr[16];                  /* IPv4 in the first 4 bytes, the rest zero */
	__u8 daddr[16];
	__u16 sport;                     /* network byte order, as on the wire */
	__u16 dport;
	__u32 seq;                       /* network byte order */
	__u8 family;                     /* 4 or 6 */
	__u8 pad[3];
};

#endif
