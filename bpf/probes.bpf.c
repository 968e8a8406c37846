// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Feature probes: each program loads only where the kernel allows what it
 * uses. The loader tries them one by one and reports plain booleans.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* Loads only where lockdown does not forbid bpf_probe_write_user. */
SEC("uprobe")
int probe_write_user(struct pt_regs *ctx)
{
	char byte = 0;

	bpf_probe_write_user((void *)0, &byte, 1);
	return 0;
}

/* Loads where bpf_loop exists (5.17+): the scan depends on it. */
static long probe_loop_step(__u64 index, void *data)
{
	return 1;
}

SEC("uprobe")
int probe_loop(struct pt_regs *ctx)
{
	bpf_loop(1, probe_loop_step, NULL, 0);
	return 0;
}

/* Loads where uprobes may read their attach cookie (5.15+). */
SEC("uprobe")
int probe_cookie(struct pt_regs *ctx)
{
	return (int)bpf_get_attach_cookie(ctx);
}
