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

/*
 * Loads where a TC program may rewrite packet bytes and fix the TCP
 * checksum: the ciphertext strategy's wire half.
 */
SEC("tc")
int probe_tc_patch(struct __sk_buff *skb)
{
	__u32 word = 0;
	__s64 diff = bpf_csum_diff(&word, 4, &word, 4, 0);

	bpf_skb_store_bytes(skb, 0, &word, 4, 0);
	bpf_l4_csum_replace(skb, 0, 0, (__u32)diff, 0);
	return 0;
}

/* Loads where userspace may run a program on its own input: the load-time GCM self-test. */
SEC("syscall")
int probe_syscall(void *ctx)
{
	return 0;
}

/* Loads where uprobes may read their attach cookie (5.15+). */
SEC("uprobe")
int probe_cookie(struct pt_regs *ctx)
{
	return (int)bpf_get_attach_cookie(ctx);
}
