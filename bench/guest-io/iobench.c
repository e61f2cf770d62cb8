/*
 * iobench: timed reads or writes on a file or block device, for
 * bench/guest-io (built static with musl there, run in the guest and on
 * the host alike).
 *
 *   iobench PATH MODE BS QD SECONDS
 *
 * MODE is read, write (sequential: each of the QD threads takes the next
 * BS-sized block in turn, wrapping at the end) or randread, randwrite
 * (BS-aligned offsets from a per-thread xorshift). QD threads each keep
 * one request in flight (pread/pwrite), so QD is the queue depth the
 * device sees. The file is opened with O_DIRECT where the file system
 * allows it (a block device does; a tmpfs file does not, which the output
 * says). Writes are the byte 0x5a. Prints one line:
 *
 *   iobench: MODE bs=BS qd=QD direct=0|1 ops=N secs=S mib_s=X iops=Y
 *
 * and exits 0, or prints "iobench: ..." with the reason and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fd, writing, random_offsets, direct;
static size_t bs;
static uint64_t blocks;
static double seconds;
static volatile int stop;
static uint64_t next_block;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

struct worker {
	pthread_t thread;
	uint64_t ops, seed;
	int failed;
};

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t take_block(struct worker *w)
{
	uint64_t b;
	if (random_offsets) {
		w->seed ^= w->seed << 13;
		w->seed ^= w->seed >> 7;
		w->seed ^= w->seed << 17;
		return w->seed % blocks;
	}
	pthread_mutex_lock(&lock);
	b = next_block;
	next_block = (next_block + 1) % blocks;
	pthread_mutex_unlock(&lock);
	return b;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	void *buf;
	if (posix_memalign(&buf, 4096, bs)) {
		w->failed = ENOMEM;
		return NULL;
	}
	memset(buf, 0x5a, bs);
	while (!stop) {
		off_t off = (off_t)(take_block(w) * bs);
		ssize_t n = writing ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
		if (n != (ssize_t)bs) {
			w->failed = n < 0 ? errno : EIO;
			break;
		}
		w->ops++;
	}
	free(buf);
	return NULL;
}

static long number(const char *s, const char *what)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*end || v <= 0) {
		fprintf(stderr, "iobench: bad %s: %s\n", what, s);
		exit(1);
	}
	return v;
}

int main(int argc, char **argv)
{
	struct worker *w;
	const char *mode;
	long qd, i;
	uint64_t ops = 0;
	double t0, took;
	off_t size;

	if (argc != 6) {
		fprintf(stderr, "usage: iobench PATH read|write|randread|randwrite BS QD SECONDS\n");
		return 1;
	}
	mode = argv[2];
	writing = !strcmp(mode, "write") || !strcmp(mode, "randwrite");
	random_offsets = !strncmp(mode, "rand", 4);
	if (!writing && strcmp(mode, "read") && strcmp(mode, "randread")) {
		fprintf(stderr, "iobench: bad mode: %s\n", mode);
		return 1;
	}
	bs = (size_t)number(argv[3], "BS");
	qd = number(argv[4], "QD");
	seconds = (double)number(argv[5], "SECONDS");
	direct = 1;
	fd = open(argv[1], O_RDWR | O_DIRECT);
	if (fd < 0 && errno == EINVAL) {
		direct = 0;
		fd = open(argv[1], O_RDWR);
	}
	if (fd < 0) {
		fprintf(stderr, "iobench: open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	size = lseek(fd, 0, SEEK_END);
	blocks = size > 0 ? (uint64_t)size / bs : 0;
	if (blocks == 0) {
		fprintf(stderr, "iobench: %s is smaller than one block\n", argv[1]);
		return 1;
	}
	w = calloc((size_t)qd, sizeof *w);
	if (!w)
		return 1;
	t0 = now();
	for (i = 0; i < qd; i++) {
		w[i].seed = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
		if (pthread_create(&w[i].thread, NULL, run, &w[i])) {
			fprintf(stderr, "iobench: cannot start thread %ld\n", i);
			return 1;
		}
	}
	while (now() - t0 < seconds)
		usleep(10000);
	stop = 1;
	for (i = 0; i < qd; i++) {
		pthread_join(w[i].thread, NULL);
		ops += w[i].ops;
		if (w[i].failed) {
			fprintf(stderr, "iobench: %s: %s\n", mode, strerror(w[i].failed));
			return 1;
		}
	}
	took = now() - t0;
	printf("iobench: %s bs=%zu qd=%ld direct=%d ops=%llu secs=%.3f mib_s=%.2f iops=%.1f\n",
	       mode, bs, qd, direct, (unsigned long long)ops, took,
	       ops * (double)bs / took / 1048576.0, ops / took);
	return 0;
}
