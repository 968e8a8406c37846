/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps of the exec hold (handle_exec in kloak.bpf.c): inspected files, held processes. */
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

#endif
