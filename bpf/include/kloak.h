/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Every struct and enum that crosses the kernel boundary. Rust gets these
 * types from the skeleton's BTF, so the two sides cannot drift; the dummy
 * globals at the end of kloak.bpf.c keep each type in BTF.
 */
#ifndef KLOAK_H
#define KLOAK_H

enum kloak_limits {
	KLOAK_PREFIX_LEN = 6,            /* "kloak:" */
	KLOAK_KEY_LEN = 16,              /* lookup key: first 16 bytes, zero padded */
	KLOAK_MIN_SECRET = 12,
	KLOAK_MAX_SECRET = 4096,
	KLOAK_MAX_HOSTS = 16,            /* allowed host patterns per secret */
	KLOAK_NAME_MAX = 256,            /* DNS name in presentation form */
	KLOAK_SCAN_MAX = 16384,          /* one TLS record of plaintext */
	/* A 16 KiB buffer holds at most 16384 / 12 placeholders. */
	KLOAK_MAX_MATCHES = 1366,
	KLOAK_MAX_CGROUPS = 65536,
	KLOAK_MAX_SECRETS = 16384,
	KLOAK_MAX_BINDINGS = 262144,
	KLOAK_MAX_TARGETS = 4096,
	KLOAK_MAX_FILES = 65536,
};

/* What happened to one placeholder (or one DNS answer). */
enum kloak_event_kind {
	KLOAK_EVENT_TLS_REWRITTEN = 1,
	KLOAK_EVENT_TLS_BLOCKED = 2,
	KLOAK_EVENT_DNS_ACCEPTED = 4,
	KLOAK_EVENT_DNS_REJECTED = 5,
	KLOAK_EVENT_CONN_LEARNED = 6,
	KLOAK_EVENT_EXEC_HELD = 7,       /* new executable, process stopped until inspected */
};

/* Why a placeholder went out unchanged, or why a DNS answer was not trusted. */
enum kloak_reason {
	KLOAK_REASON_NONE = 0,
	KLOAK_REASON_HOST_NOT_ALLOWED = 1,
	KLOAK_REASON_UNVERIFIED_CONNECTION = 2,
	KLOAK_REASON_PORT_MISMATCH = 3,
	KLOAK_REASON_SNI_MISMATCH = 4,
	KLOAK_REASON_NOT_BOUND = 5,
	KLOAK_REASON_SPLIT_PLACEHOLDER = 6,
	KLOAK_REASON_WRITE_REFUSED = 7,
	KLOAK_REASON_REWRITE_UNAVAILABLE = 8,
	KLOAK_REASON_TOO_MANY_PLACEHOLDERS = 9,
	KLOAK_REASON_RESTORE_FAILED = 10,
	KLOAK_REASON_DNS_UNTRUSTED_SOURCE = 11,
	KLOAK_REASON_DNS_NO_QUERY = 12,
	KLOAK_REASON_DNS_FORGED_BY_WORKLOAD = 13,
	KLOAK_REASON_DNS_TTL_ZERO = 14,
	KLOAK_REASON_DNS_EXPIRED = 15,
	KLOAK_REASON_MAX = 16,
};

/* How a placeholder was found in the write. */
enum kloak_encoding {
	KLOAK_ENC_PLAIN = 0,
	KLOAK_ENC_HPACK_HUFFMAN = 1,     /* HTTP/2 header value, Huffman-coded at any bit offset */
};

/* Which hook saw the write. */
enum kloak_hook {
	KLOAK_HOOK_SSL_WRITE = 1,
	KLOAK_HOOK_SSL_WRITE_EX = 2,
	KLOAK_HOOK_GO_WRITE = 3,
	KLOAK_HOOK_DNS = 4,
	KLOAK_HOOK_SYSCALL = 5,
};

/* Why rewriting is not possible at all on this kernel (cfg_rewrite_mode). */
enum kloak_rewrite_mode {
	KLOAK_MODE_REWRITE = 0,
	KLOAK_MODE_OBSERVE_LOCKDOWN = 1,
	KLOAK_MODE_OBSERVE_REQUESTED = 2,
};

/* Per-CPU counters, one per branch of the data plane. */
enum kloak_counter {
	KLOAK_CTR_WRITE_CALLS = 0,       /* hook entered, any cgroup */
	KLOAK_CTR_WRITE_ENABLED = 1,     /* hook entered from an enabled cgroup */
	KLOAK_CTR_BYTES_SCANNED = 2,
	KLOAK_CTR_SCAN_TRUNCATED = 3,    /* buffer longer than KLOAK_SCAN_MAX */
	KLOAK_CTR_CANDIDATES = 4,        /* "kloak:" seen */
	KLOAK_CTR_MATCHES = 5,           /* full placeholder compared equal */
	KLOAK_CTR_REWRITTEN = 6,
	KLOAK_CTR_RESTORED = 7,
	KLOAK_CTR_EVENTS_LOST = 8,       /* ring buffer full */
	KLOAK_CTR_CONN_LEARNED = 9,
	KLOAK_CTR_DNS_ANSWERS = 10,
	KLOAK_CTR_DNS_RECORDS = 11,
	KLOAK_CTR_DNS_QUERIES = 12,
	KLOAK_CTR_DNS_FORGED_DROPPED = 13,
	KLOAK_CTR_BLOCKED_BASE = 16,     /* + enum kloak_reason */
	KLOAK_CTR_MAX = 32,
};

enum kloak_secret_flags {
	KLOAK_SECRET_ANY_HOST = 1,
};

enum kloak_conn_flags {
	KLOAK_CONN_HAS_FD = 1,
	KLOAK_CONN_HAS_SNI = 2,
	KLOAK_CONN_HTTP2 = 4,            /* the client preface went out: frames are tracked */
};

/* Placeholder lookup key: its first 16 bytes, zero padded. */
struct kloak_secret_key {
	__u8 bytes[KLOAK_KEY_LEN];
};

/* A secret as the kernel needs it; the value never leaves kernel memory. */
struct kloak_secret {
	__u32 id;
	__u32 len;
	__u16 port;                      /* 0: any port */
	__u16 flags;                     /* enum kloak_secret_flags */
	__u32 host_count;
	__u32 host_ids[KLOAK_MAX_HOSTS];
	__u8 placeholder[KLOAK_MAX_SECRET];
	__u8 value[KLOAK_MAX_SECRET];
};

/* S6: a secret may be used by this cgroup. */
struct kloak_binding_key {
	__u64 cgroup_id;
	__u32 secret_id;
	__u32 pad;
};

/* Addresses are IPv6, IPv4 mapped as ::ffff:a.b.c.d. */
struct kloak_addr {
	__u8 bytes[16];
};

/* S3: this address was given for host pattern host_id by a trusted resolver. */
struct kloak_verified_key {
	struct kloak_addr addr;
	__u32 host_id;
	__u32 pad;
};

struct kloak_verified {
	__u64 expires_ns;                /* CLOCK_BOOTTIME; ~0 for IP literals */
};

/*
 * Host patterns by hash of their name (or of the suffix after "*."): FNV-1a
 * 64 over the lower-case name's bytes in reverse order, so one backward pass
 * over a DNS or SNI name yields the hash of every suffix. The value carries
 * the name so the kernel compares it in full: a collision never verifies.
 */
struct kloak_name_key {
	__u64 hash;
	__u32 is_suffix;
	__u32 pad;
};

struct kloak_name {
	__u32 host_id;
	__u32 len;
	char name[KLOAK_NAME_MAX];
};

struct kloak_resolver_key {
	struct kloak_addr addr;
	__u16 port;
	__u16 pad[3];
};

/* An outstanding DNS query: an answer must match one (blind spoofing). */
struct kloak_dns_query_key {
	struct kloak_addr resolver;
	__u16 resolver_port;
	__u16 client_port;
	__u16 txid;
	__u16 pad;
};

/* One TLS object (SSL*, or Go *tls.Conn) of one process. */
struct kloak_conn_key {
	__u32 tgid;
	__u32 pad;
	__u64 tls_ptr;
};

struct kloak_conn {
	__s32 fd;
	__u32 flags;                     /* enum kloak_conn_flags */
	__u32 sni_host_count;
	__u32 sni_host_ids[KLOAK_MAX_HOSTS];
	/*
	 * HTTP/2 framing across writes: only header-bearing frames are searched
	 * for Huffman-coded placeholders, and a frame (or its 9-byte header) may
	 * continue in the next write.
	 */
	__u32 h2_frame_left;             /* payload bytes of the current frame still to come */
	__u8 h2_frame_type;
	__u8 h2_head_len;                /* bytes of a split frame header held below */
	__u8 h2_head[32];                /* 9 used; sized so one bounded read can append */
	__u8 pad[2];
};

/* A thread is inside the TLS library with this object (handshake or write). */
struct kloak_tls_call {
	__u64 tls_ptr;
	__u64 buf;
	__u32 hook;
	__u32 pad;
};

/*
 * What userspace found in a file (the value in `files`). The kernel only
 * checks that an entry exists; the state is for `kloak doctor`.
 */
enum kloak_file_state {
	KLOAK_FILE_INSPECTED = 1,        /* nothing hooked: no TLS, or not hookable */
	KLOAK_FILE_HOOKED = 2,           /* uprobes attached */
};

/* An executable already inspected (hooked or not), by kernel dev_t and inode. */
struct kloak_file_key {
	__u64 dev;
	__u64 ino;
};

/* Per hooked binary, found by the uprobe's attach cookie. */
struct kloak_target {
	__u64 func_vaddr;                /* where the probed function is linked */
	__u64 go_tcpconn_close;          /* link-time net.(*TCPConn).Close: net.Conn itab fun[0] */
	__u64 go_tcpconn_write;          /* link-time net.(*TCPConn).Write: net.Conn itab fun[7] */
	__u32 go_fd_offset;              /* poll.FD.Sysfd inside net.netFD */
	__u32 pad;
};

/* Who a pending write-back belongs to: a thread, or a Go goroutine. */
struct kloak_restore_key {
	__u32 tgid;
	__u32 tid;                       /* 0 for Go */
	__u64 goroutine;                 /* 0 for C libraries */
};

/* Placeholders to write back once the library has consumed the buffer (S5). */
struct kloak_restore_entry {
	__u64 addr;
	struct kloak_secret_key key;
	__u32 encoding;                  /* enum kloak_encoding */
	__u32 shift;                     /* Huffman: bits of the first byte before the placeholder */
};

struct kloak_restore {
	__u32 count;
	__u32 pad;
	struct kloak_restore_entry entries[KLOAK_MAX_MATCHES];
};

/* Ring-buffer record. Never carries a secret value or placeholder bytes. */
struct kloak_event {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	__u32 kind;                      /* enum kloak_event_kind */
	__u32 reason;                    /* enum kloak_reason */
	__u32 hook;                      /* enum kloak_hook */
	__u32 secret_id;
	__u32 offset;                    /* placeholder offset in the write */
	__u32 ttl;                       /* DNS answers */
	__u32 host_id;
	__s32 fd;
	__u16 port;
	__u16 family;                    /* AF_INET / AF_INET6, 0 when unknown */
	__u32 encoding;                  /* enum kloak_encoding */
	struct kloak_addr addr;
	char comm[16];
};

#endif /* KLOAK_H */
