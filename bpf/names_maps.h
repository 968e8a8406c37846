/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps of the host-pattern stage (names.bpf.h): the patterns, and the per-CPU name being matched. */
#ifndef KLOAK_NAMES_MAPS_H
#define KLOAK_NAMES_MAPS_H

#include "kloak.h"

/* Host patterns by name hash (exact names and "*." suffixes). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLOAK_MAX_SECRETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct kloak_name_key);
	__type(value, struct kloak_name);
} names SEC(".maps");

struct name_match {
	__u32 count;
	__u32 ids[KLOAK_MAX_HOSTS];
};

/* A lower-case name in presentation form plus the walk state over it. */
struct name_ctx {
	__u32 owner;
	__u32 len;
	__u64 hash;
	char name[KLOAK_NAME_MAX];
	struct name_match match;
};

enum name_slot { NAME_SLOT_TASK = 0, NAME_SLOT_SOFTIRQ = 1 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct name_ctx);
} name_buf SEC(".maps");

#endif
