// SSL_write cost, measured from the caller: a TLS client writes SIZE-byte
// records to a server over a socketpair (server in a forked child that reads
// and discards). Prints the mean nanoseconds per SSL_write.
//
// usage: ssl_write_bench SIZE ITERATIONS CERT KEY
// The buffer holds $BENCH_PLACEHOLDER once (at offset 64) when set, so the
// data plane has a real placeholder to find on every write. With BENCH_TCP=1
// the pair is a TCP connection over 127.0.0.1 instead (the ciphertext
// strategy patches TCP segments, so its cost includes theirs).
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "ssl_write_bench: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(2);
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void serve(int fd, const char *cert, const char *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	SSL *ssl;
	char buf[65536];

	if (!ctx || SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
		die("server context");
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_accept(ssl) != 1)
		die("accept");
	/*
	 * Acknowledge at once (TCP_QUICKACK lapses, so per read): a delayed ACK
	 * would keep the ciphertext strategy's patches alive for 40 ms and the
	 * writer would measure a full patch table instead of its per-write cost.
	 */
	do {
		int one = 1;

		setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
	} while (SSL_read(ssl, buf, sizeof(buf)) > 0);
	exit(0);
}

/* A connected TCP pair over loopback: sv[0] the client end, sv[1] the server's. */
static int tcp_pair(int sv[2])
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	int listener = socket(AF_INET, SOCK_STREAM, 0);

	if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) ||
	    listen(listener, 1) || getsockname(listener, (struct sockaddr *)&addr, &len))
		return -1;
	sv[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (sv[0] < 0 || connect(sv[0], (struct sockaddr *)&addr, sizeof(addr)))
		return -1;
	sv[1] = accept(listener, NULL, NULL);
	close(listener);
	return sv[1] < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
	int sv[2], size, iterations;
	const char *placeholder = getenv("BENCH_PLACEHOLDER");
	SSL_CTX *ctx;
	SSL *ssl;
	char *buf;
	double start;
	pid_t child;

	if (argc != 5)
		die("usage: ssl_write_bench SIZE ITERATIONS CERT KEY");
	size = atoi(argv[1]);
	iterations = atoi(argv[2]);
	if (size < 128 || size > 16384 || iterations < 1)
		die("SIZE must be 128..16384 and ITERATIONS positive");
	if (getenv("BENCH_TCP") ? tcp_pair(sv) : socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		die("socket pair");
	child = fork();
	if (child == 0) {
		close(sv[0]);
		serve(sv[1], argv[3], argv[4]);
	}
	close(sv[1]);
	ctx = SSL_CTX_new(TLS_client_method());
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, sv[0]);
	if (SSL_connect(ssl) != 1)
		die("connect");
	buf = malloc(size);
	memset(buf, 'x', size);
	if (placeholder && strlen(placeholder) + 64 < (size_t)size)
		memcpy(buf + 64, placeholder, strlen(placeholder));
	for (int i = 0; i < iterations / 10; i++) /* warm up */
		SSL_write(ssl, buf, size);
	start = now_ns();
	for (int i = 0; i < iterations; i++)
		if (SSL_write(ssl, buf, size) != size)
			die("write");
	printf("%.0f\n", (now_ns() - start) / iterations);
	SSL_shutdown(ssl);
	close(sv[0]);
	waitpid(child, NULL, 0);
	return 0;
}
