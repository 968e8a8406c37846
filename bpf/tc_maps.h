/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Maps of the wire stage (tc.bpf.h) alone; the patches themselves are in ct_flows (cipher_maps.h). */
#ifndef KLOAK_TC_MAPS_H
#define KLOAK_TC_MAPS_H

#define PATCH_CHUNK 64

struct patch_bufs {
	__u8 old[PATCH_CHUNK] __attribute__((aligned(8)));
	__u8 new[PATCH_CHUNK] __attribute__((aligned(8)));
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct patch_bufs);
} patch_buf SEC(".maps");

#endif
