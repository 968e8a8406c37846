/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps of the exec hold (handle_exec in kloak.bpf.c): inspected files, held processes, the agent's heartbeat. */
#ifndef KLOAK_EXEC_MAPS_H
#define KLOAK_EXEC_MAPS_H

#include "kloak.h"

/* Executables userspace has inspected: their exec is not held again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KLOAK_MAX_FILES);
	__type(key, struct kloak_file_key);
	__type(value, __u8);             /* enum kloak_file_state */
} files SEC(".maps");

/* Processes stopped at exec, not yet resumed (see struct kloak_held). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_HELD);
	__type(key, __u32);
	__type(value, struct kloak_held);
} held SEC(".maps");

/*
 * The boot time (ns) of the agent's last sign of life, 0 once it stopped on
 * purpose. Pinned links outlive the agent; a hold nobody will answer would
 * stop a workload until the next agent is up, so execs are held only while
 * an agent is alive.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} agent_heartbeat SEC(".maps");

#endif
