/*
 * vsock-test: a small AF_VSOCK client and server for the default guest
 * (busybox has none). Built static by rootfs/build.sh; installed as
 * /bin/vsock-test.
 *
 *   vsock-test listen PORT        accept one connection on PORT, copy what
 *                                 it sends to stdout until EOF
 *   vsock-test echo PORT N        accept N connections on PORT, each served
 *                                 by its own process that sends back what
 *                                 it reads until EOF
 *   vsock-test connect CID PORT   connect to CID:PORT, send stdin (then shut
 *                                 down the sending side) and copy what comes
 *                                 back to stdout, until both are done
 *
 * "vsock-test: listening on PORT" goes to stderr once the port is open, so
 * a host-side test knows when to connect. Exit status 0 on success; 1 with
 * a message naming the failed call otherwise.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * From <linux/vm_sockets.h>, spelled out so the program builds against
 * musl's headers alone (musl-gcc does not see the kernel's).
 */
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xffffffffU
/* SO_VM_SOCKETS_CONNECT_TIMEOUT with a struct timeval of 64-bit time_t. */
#define SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW 8
struct sockaddr_vm {
	sa_family_t svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_zero[sizeof(struct sockaddr) - sizeof(sa_family_t) -
			       sizeof(unsigned short) - 2 * sizeof(unsigned int)];
};

static int fail(const char *what)
{
	fprintf(stderr, "vsock-test: %s: %s\n", what, strerror(errno));
	return 1;
}

static unsigned parse_num(const char *s, const char *what)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v > 0xffffffffUL) {
		fprintf(stderr, "vsock-test: bad %s: %s\n", what, s);
		exit(2);
	}
	return (unsigned)v;
}

static int write_all(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Copy `in` to `out` until EOF on `in`. */
static int copy(int in, int out)
{
	static char buf[65536];
	for (;;) {
		ssize_t r = read(in, buf, sizeof buf);
		if (r == 0)
			return 0;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (write_all(out, buf, (size_t)r) < 0)
			return -1;
	}
}

static int listen_on(unsigned port, int backlog)
{
	struct sockaddr_vm addr;
	int s = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (s < 0)
		return -1;
	memset(&addr, 0, sizeof addr);
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_ANY;
	addr.svm_port = port;
	if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, backlog) < 0)
		return -1;
	fprintf(stderr, "vsock-test: listening on %u\n", port);
	return s;
}

static int do_listen(unsigned port)
{
	int s = listen_on(port, 1), c;
	if (s < 0)
		return fail("listen");
	c = accept(s, NULL, NULL);
	if (c < 0)
		return fail("accept");
	if (copy(c, 1) < 0)
		return fail("read");
	close(c);
	return 0;
}

static int do_echo(unsigned port, unsigned n)
{
	int s = listen_on(port, 64), status, bad = 0;
	unsigned i;
	if (s < 0)
		return fail("listen");
	for (i = 0; i < n; i++) {
		int c = accept(s, NULL, NULL);
		pid_t pid;
		if (c < 0)
			return fail("accept");
		pid = fork();
		if (pid < 0)
			return fail("fork");
		if (pid == 0) {
			int rc = copy(c, c) < 0 ? 1 : 0;
			shutdown(c, SHUT_WR);
			_exit(rc);
		}
		close(c);
	}
	while (wait(&status) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			bad++;
	if (bad)
		fprintf(stderr, "vsock-test: %d of %u echo connections failed\n", bad, n);
	return bad ? 1 : 0;
}

static int do_connect(unsigned cid, unsigned port)
{
	static char buf[65536];
	struct sockaddr_vm addr;
	struct pollfd fds[2];
	int s = socket(AF_VSOCK, SOCK_STREAM, 0), sending = 1, receiving = 1;
	if (s < 0)
		return fail("socket");
	memset(&addr, 0, sizeof addr);
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = cid;
	addr.svm_port = port;
	/* The kernel gives up on a vsock connect after 2 s by default; a
	 * host busy enough (the lab's emulation under load) answers later. */
	{
		long long tv[2] = { 60, 0 };
		if (setsockopt(s, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW, tv, sizeof tv) < 0)
			fprintf(stderr, "vsock-test: cannot lengthen the connect timeout: %s\n",
				strerror(errno));
	}
	if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
		return fail("connect");
	/* Until both directions are done: stdin's end shuts down the sending
	 * side, the peer's end of the stream the receiving one. */
	while (sending || receiving) {
		int n = 0, in = -1, net = -1;
		if (sending) {
			in = n;
			fds[n].fd = 0;
			fds[n++].events = POLLIN;
		}
		if (receiving) {
			net = n;
			fds[n].fd = s;
			fds[n++].events = POLLIN;
		}
		if (poll(fds, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			return fail("poll");
		}
		if (in >= 0 && fds[in].revents) {
			ssize_t r = read(0, buf, sizeof buf);
			if (r < 0 && errno != EINTR)
				return fail("read stdin");
			if (r == 0) {
				sending = 0;
				shutdown(s, SHUT_WR);
			} else if (r > 0 && write_all(s, buf, (size_t)r) < 0) {
				return fail("send");
			}
		}
		if (net >= 0 && fds[net].revents) {
			ssize_t r = read(s, buf, sizeof buf);
			if (r < 0 && errno != EINTR)
				return fail("receive");
			if (r == 0)
				receiving = 0;
			if (r > 0 && write_all(1, buf, (size_t)r) < 0)
				return fail("write stdout");
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && strcmp(argv[1], "listen") == 0)
		return do_listen(parse_num(argv[2], "port"));
	if (argc == 4 && strcmp(argv[1], "echo") == 0)
		return do_echo(parse_num(argv[2], "port"), parse_num(argv[3], "count"));
	if (argc == 4 && strcmp(argv[1], "connect") == 0)
		return do_connect(parse_num(argv[2], "cid"), parse_num(argv[3], "port"));
	fprintf(stderr, "usage: vsock-test listen PORT | echo PORT N | connect CID PORT\n");
	return 2;
}
