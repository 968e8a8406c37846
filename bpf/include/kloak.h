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
	KLOAK_MAX_HELD = 4096,           /* processes stopped at exec at once */
	KLOAK_CT_MAX_ITEMS = 16,         /* placeholders of one write patched in the ciphertext */
	KLOAK_CT_MAX_PATCHES = 32,       /* unacknowledged patches per TCP connection */
	KLOAK_CT_MAX_RECORDS = 4,        /* TLS records parsed per socket write */
	KLOAK_CT_MAX_FLOWS = 4096,
	KLOAK_MAX_RETIRED = 256,         /* replaced values kept for records in flight */
	KLOAK_MAX_WIRED_NETNS = 4096,    /* network namespaces (pods) whose packets kloak patches */
	KLOAK_CT_POW_BITS = 11,          /* H^(2^i) kept per session: exponents up to 2047 blocks */
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
	KLOAK_REASON_CIPHER_UNSUPPORTED = 16,    /* not AES-GCM (ChaCha20-Poly1305, CCM, ...) */
	KLOAK_REASON_CIPHER_STATE_UNKNOWN = 17,  /* the session key was not captured */
	KLOAK_REASON_RECORD_MISMATCH = 18,       /* the records written did not carry the write */
	KLOAK_REASON_PATCH_TABLE_FULL = 19,
	KLOAK_REASON_RECORD_NOT_SEEN = 20,       /* no socket write of the TLS call carried it */
	KLOAK_REASON_ENCODING_UNSUPPORTED = 21,  /* HPACK Huffman: in-place strategy only */
	KLOAK_REASON_WIRE_UNAVAILABLE = 22,      /* no tc filter attached to patch packets */
	KLOAK_REASON_MAX = 23,
};

/* How a rewrite reaches the wire (cfg_strategy; the event's strategy). */
enum kloak_strategy {
	KLOAK_STRATEGY_AUTO = 0,         /* ciphertext for AES-GCM sessions, else in place where allowed */
	KLOAK_STRATEGY_IN_PLACE = 1,     /* the plaintext buffer, written back after the call (S5) */
	KLOAK_STRATEGY_CIPHERTEXT = 2,   /* the AES-GCM ciphertext and tag, on the wire (TC) */
};

/* A session's write cipher, as far as kloak can patch it. */
enum kloak_cipher {
	KLOAK_CIPHER_UNKNOWN = 0,
	KLOAK_CIPHER_AES_128_GCM = 1,
	KLOAK_CIPHER_AES_256_GCM = 2,
	KLOAK_CIPHER_OTHER = 3,
};

/* A ciphertext patch slot: written by the socket-write path, read and freed by TC. */
enum kloak_patch_state {
	KLOAK_PATCH_FREE = 0,
	KLOAK_PATCH_FILLING = 1,
	KLOAK_PATCH_LIVE = 2,
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
	KLOAK_CTR_CT_KEYS = 14,          /* AES-GCM write keys captured (H derived) */
	KLOAK_CTR_CT_BOUND = 15,         /* placeholders bound to TCP sequence ranges */
	KLOAK_CTR_CT_SEGMENTS = 16,      /* segments patched on the wire */
	KLOAK_CTR_CT_RETRANSMITS = 17,   /* ... of which retransmissions, patched again */
	KLOAK_CTR_CT_ACKED = 18,         /* patches released by the peer's acknowledgement */
	KLOAK_CTR_CT_FAILED = 19,        /* a segment could not be patched whole (load, store, checksum) */
	KLOAK_CTR_RESTORE_STALE = 20,    /* restore lists of calls that never returned, dropped unwritten */
	KLOAK_CTR_CT_VALUE_GONE = 21,    /* a bound patch whose value was neither current nor retired: not applied */
	KLOAK_CTR_HOLD_NO_AGENT = 22,    /* an exec not held: no agent alive to answer (the file ran unhooked) */
	KLOAK_CTR_BLOCKED_BASE = 32,     /* + enum kloak_reason */
	KLOAK_CTR_MAX = 64,
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
	__u64 value_id;                  /* differs whenever value differs (a hash of it, never 0) */
	__u16 port;                      /* 0: any port */
	__u16 flags;                     /* enum kloak_secret_flags */
	__u32 host_count;
	__u32 host_ids[KLOAK_MAX_HOSTS];
	__u8 placeholder[KLOAK_MAX_SECRET];
	__u8 value[KLOAK_MAX_SECRET];
};

/*
 * A value replaced or deleted while records bound to it may still be
 * retransmitted: kept, under its own id, until no patch refers to it.
 */
struct kloak_retired_key {
	struct kloak_secret_key key;
	__u64 value_id;
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

/* A process stopped at exec until userspace resumes it; keyed by tgid. The map is
 * pinned, so an agent that died between the stop and the SIGCONT is swept up by
 * the next one, and held processes whose event was lost are found by age. */
struct kloak_held {
	__u64 cgroup_id;
	__u64 held_ns;                   /* bpf_ktime_get_boot_ns() at the stop */
};

/* Per hooked binary, found by the uprobe's attach cookie. */
struct kloak_target {
	__u64 func_vaddr;                /* where the probed function is linked */
	__u64 go_tcpconn_close;          /* link-time net.(*TCPConn).Close: net.Conn itab fun[0] */
	__u64 go_tcpconn_write;          /* link-time net.(*TCPConn).Write: net.Conn itab fun[7] */
	__u32 go_fd_offset;              /* poll.FD.Sysfd inside net.netFD */
	__u32 pad;
	/* The hooked file: a restarted agent finds each file's slot (its links' cookie) here. */
	__u64 file_dev;
	__u64 file_ino;
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
	__u32 strategy;                  /* enum kloak_strategy: how a rewrite was made */
	__u32 pad;
	struct kloak_addr addr;
	char comm[16];
};

/* Ciphertext strategy (cipher_*.bpf.h, tc.bpf.h). */

/* The write cipher of one TLS object, from the library's own key setup. */
struct kloak_ct_session {
	__u64 cipher_ctx;                /* EVP_CIPHER_CTX* the key was set on */
	__u32 cipher;                    /* enum kloak_cipher */
	__u32 nid;                       /* the library's cipher id (reported) */
	__u32 tls13;                     /* per-record nonce setup seen: TLS 1.3 records */
	__u32 pad;
	__u8 h[16];                      /* GHASH key H = AES_K(0^128), big-endian bytes */
	__u8 h_pow[KLOAK_CT_POW_BITS][16]; /* H^(2^i) */
};

/* A cipher object's algorithm, remembered from the call that named it. */
struct kloak_ct_cipher {
	__u32 nid;
	__u32 key_len;
	__u32 encrypt;                   /* the direction set with it (a later call may pass -1: unchanged) */
	__u32 pad;
};

/* One placeholder of a write, waiting for the TLS records that carry it. */
struct kloak_ct_item {
	struct kloak_secret_key key;
	__u32 secret_id;
	__u32 pt_off;                    /* offset in the write's plaintext */
	__u32 len;
	__u32 bound;                     /* bytes placed in records so far */
};

/* The ciphertext-strategy placeholders of the write a thread is inside. */
struct kloak_ct_write {
	__u64 tls_ptr;
	__s32 fd;
	__u32 count;
	__u32 total;                     /* plaintext bytes of the write */
	__u32 pt_done;                   /* ... already seen in records */
	__u64 cgroup_id;
	__u32 hook;
	__u32 pad;
	struct kloak_ct_item items[KLOAK_CT_MAX_ITEMS];
};

/* A TCP connection as its packets name it; ports in host order. */
struct kloak_flow_key {
	struct kloak_addr saddr;
	struct kloak_addr daddr;
	__u16 sport;
	__u16 dport;
	__u32 pad;
};

/*
 * XOR over one TCP sequence range: with the secret's value ^ placeholder
 * (from secret_off on), or with delta (a GCM tag difference).
 */
struct kloak_ct_patch {
	__u32 state;                     /* enum kloak_patch_state */
	__u32 seq;
	__u32 len;
	__u32 sent;                      /* times applied: 1 + retransmissions */
	__u32 secret_off;
	__u32 use_delta;
	__u64 value_id;                  /* the value bound: a rotation must not change the bytes */
	struct kloak_secret_key key;
	__u8 delta[16];
};

/*
 * Load-time self-test of the kernel's GCM arithmetic (handle_gcm_selftest, a
 * BPF_PROG_TYPE_SYSCALL program run by userspace): the same code the data
 * path uses, compared with userspace's own implementation.
 */
enum kloak_gcm_op {
	KLOAK_GCM_AES_BLOCK = 1,         /* out = AES_key(x) */
	KLOAK_GCM_MUL = 2,               /* out = x * y in GF(2^128) */
	KLOAK_GCM_TAG_DELTA = 3,         /* out = GHASH tag change, H = x (see below) */
};

struct kloak_gcm_selftest {
	__u32 op;                        /* enum kloak_gcm_op */
	__u32 key_len;                   /* AES: 16 or 32 */
	__u8 key[32];
	__u8 x[16];
	__u8 y[16];
	/*
	 * TAG_DELTA: a record of ct_len ciphertext bytes whose bytes
	 * [delta_off, delta_off + delta_len) change by XOR with delta.
	 */
	__u32 ct_len;
	__u32 delta_off;
	__u32 delta_len;                 /* 1..64 */
	__u32 result;                    /* 0: done; else the op was refused */
	__u8 delta[64];
	__u8 out[16];
};

struct kloak_ct_flow {
	struct kloak_ct_patch patches[KLOAK_CT_MAX_PATCHES];
};

#endif /* KLOAK_H */
