/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Which host patterns a DNS or TLS server name matches (exact and "*." suffix). */
#ifndef KLOAK_NAMES_BPF_H
#define KLOAK_NAMES_BPF_H

#include "kloak.h"
#include "names_maps.h"
#include "common.bpf.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static __always_inline struct name_ctx *name_ctx_get(__u32 slot)
{
	struct name_ctx *ctx = bpf_map_lookup_elem(&name_buf, &slot);

	if (ctx) {
		ctx->owner = (__u32)bpf_get_current_pid_tgid();
		ctx->len = 0;
		ctx->match.count = 0;
	}
	return ctx;
}

/* Adds the pattern for name[start..len) when its stored name equals it in full. */
static __always_inline void name_try(struct name_ctx *ctx, __u32 start, __u32 is_suffix)
{
	struct kloak_name_key key = { .hash = ctx->hash, .is_suffix = is_suffix };
	struct kloak_name *pattern = bpf_map_lookup_elem(&names, &key);
	__u32 len = ctx->len;

	if (!pattern || len > KLOAK_NAME_MAX || start > len || pattern->len != len - start)
		return;
	for (__u32 i = 0; i < KLOAK_NAME_MAX; i++) {
		__u32 at = start + i;

		if (at >= len)
			break;
		if (at >= KLOAK_NAME_MAX ||
		    pattern->name[i & (KLOAK_NAME_MAX - 1)] != ctx->name[at & (KLOAK_NAME_MAX - 1)])
			return;
	}
	__u32 n = ctx->match.count;

	if (n < KLOAK_MAX_HOSTS) {
		ctx->match.ids[n & (KLOAK_MAX_HOSTS - 1)] = pattern->host_id;
		ctx->match.count = n + 1;
	}
}

struct name_loop {
	struct name_ctx *ctx;
};

/* Walks the name backwards: at each dot, the hash so far is its suffix's. */
static long name_walk_step(__u64 index, void *data)
{
	struct name_ctx *ctx = ((struct name_loop *)data)->ctx;
	__u32 len = ctx->len;
	__u32 i;
	char c;

	if (index >= len || len > KLOAK_NAME_MAX)
		return 1;
	i = len - 1 - (__u32)index;
	if (i >= KLOAK_NAME_MAX)
		return 1;
	c = ctx->name[i & (KLOAK_NAME_MAX - 1)];
	if (c == '.')
		name_try(ctx, i + 1, 1);
	ctx->hash = (ctx->hash ^ (__u8)c) * FNV_PRIME;
	return 0;
}

/* Fills ctx->match with every pattern ctx->name[0..len) matches. */
static __always_inline void name_match_all(struct name_ctx *ctx)
{
	struct name_loop loop = { .ctx = ctx };

	ctx->hash = FNV_OFFSET;
	ctx->match.count = 0;
	bpf_loop(KLOAK_NAME_MAX, name_walk_step, &loop, 0);
	name_try(ctx, 0, 0);
}

/* False when another program on this CPU reused the scratch meanwhile. */
static __always_inline bool name_ctx_intact(struct name_ctx *ctx)
{
	return ctx->owner == (__u32)bpf_get_current_pid_tgid();
}

#endif
