/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * S2: the peer of a connection is read from the kernel socket behind the fd
 * the TLS object writes to, never guessed from the process.
 */
#ifndef KLOAK_SOCK_BPF_H
#define KLOAK_SOCK_BPF_H

#include "kloak.h"
#include "common.bpf.h"

#define TCP_ESTABLISHED 1
#define TCP_CLOSE_WAIT 8

struct peer {
	struct kloak_addr addr;
	__u16 port;
	__u16 family;
};

/* The TCP socket behind one of the current process's fds, or NULL. */
static __always_inline struct sock *tcp_sock_of_fd(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	struct sock *sk;
	unsigned int max_fds;
	umode_t mode;

	if (!fdt || fd < 0)
		return NULL;
	max_fds = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned int)fd >= max_fds)
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return NULL;
	return sk;
}

/* Peer address and port of a connected TCP socket fd. */
static __always_inline bool peer_of_fd(int fd, struct peer *p)
{
	struct sock *sk = tcp_sock_of_fd(fd);
	__u8 state;

	if (!sk)
		return false;
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
		return false;
	p->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	p->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (p->family == AF_INET) {
		addr_from_v4(&p->addr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else if (p->family == AF_INET6) {
		BPF_CORE_READ_INTO(&p->addr, sk, __sk_common.skc_v6_daddr);
	} else {
		return false;
	}
	return p->port != 0;
}

#endif
