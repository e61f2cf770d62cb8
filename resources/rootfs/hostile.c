/*
 * hostile: a guest program that drives a virtio-mmio block device the way a
 * broken or malicious driver would, from user space, so that the host side
 * (flint) can be shown to survive it. Built static by rootfs/build.sh;
 * installed as /bin/hostile. Needs root, /dev/mem (the device's MMIO window;
 * the kernel's STRICT_DEVMEM allows it: it is not RAM) and
 * /proc/self/pagemap (the physical address of its own locked pages, which
 * hold the queue and the buffers).
 *
 *   hostile DISK MODE[=COUNT]...
 *
 * DISK is a virtio block disk by kernel name (vdb). hostile unbinds it from
 * virtio_blk, then runs each MODE in turn, after a reset of the device:
 *   garbage  COUNT rounds (default 2000) of pseudo-random descriptor tables
 *            and available rings, each followed by a notification; the
 *            device is reset and set up again whenever it reports
 *            DEVICE_NEEDS_RESET
 *   outside  well-formed requests whose buffers lie outside guest RAM, in
 *            the MMIO hole, past 2^48, 4 GiB long, chains that loop, and
 *            other malformed chains; then one good read of sector 0 and
 *            one good write of sector 1 (512 bytes of 0x5a)
 *   notify   COUNT (default 1000000) notifications of the empty queue 0,
 *            COUNT/100 of queue 7 and of queue 0xffffffff, which do not
 *            exist
 * It prints one line per step ("hostile: ...") and ends each MODE with
 * "hostile: done MODE in S s"; exit status 0 unless the set-up failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_STATUS 0x060
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC_LOW 0x080
#define R_QUEUE_DESC_HIGH 0x084
#define R_QUEUE_DRIVER_LOW 0x090
#define R_QUEUE_DRIVER_HIGH 0x094
#define R_QUEUE_DEVICE_LOW 0x0a0
#define R_QUEUE_DEVICE_HIGH 0x0a4

#define S_ACKNOWLEDGE 0x01
#define S_DRIVER 0x02
#define S_DRIVER_OK 0x04
#define S_FEATURES_OK 0x08
#define S_NEEDS_RESET 0x40

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

#define QSIZE 16
#define PAGE 4096

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

static volatile uint32_t *regs;
/* The ring page: descriptors at 0, available ring at 0x800, used at 0xc00. */
static uint8_t *ring;
static uint64_t ring_pa;
/* The buffer page: request header at 0, status at 0x10, data at 0x200. */
static uint8_t *buf;
static uint64_t buf_pa;
static uint16_t last_used;
static unsigned resets;

#define DESC ((volatile struct desc *)ring)
#define AVAIL_FLAGS (*(volatile uint16_t *)(ring + 0x800))
#define AVAIL_IDX (*(volatile uint16_t *)(ring + 0x802))
#define AVAIL_RING ((volatile uint16_t *)(ring + 0x804))
#define USED_IDX (*(volatile uint16_t *)(ring + 0xc02))
#define USED_LEN(i) (*(volatile uint32_t *)(ring + 0xc04 + 8 * (i) + 4))

static void die(const char *what)
{
	printf("hostile: %s failed: %s\n", what, strerror(errno));
	exit(1);
}

static uint32_t rd(unsigned off) { return regs[off / 4]; }
static void wr(unsigned off, uint32_t v) { regs[off / 4] = v; }

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A locked page and its physical address, from /proc/self/pagemap. */
static uint8_t *locked_page(uint64_t *pa)
{
	uint8_t *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
	if (p == MAP_FAILED)
		die("mmap of a page");
	memset(p, 0, PAGE);
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0)
		die("open /proc/self/pagemap");
	uint64_t entry;
	if (pread(fd, &entry, 8, (off_t)((uintptr_t)p / PAGE) * 8) != 8)
		die("read /proc/self/pagemap");
	close(fd);
	if (!(entry >> 63) || !(entry & ((1ULL << 55) - 1))) {
		errno = EPERM;
		die("pagemap lookup (not present or no PFN)");
	}
	*pa = (entry & ((1ULL << 55) - 1)) * PAGE;
	return p;
}

/* Read a whole small file into out; returns its length or -1. */
static int slurp(const char *path, char *out, size_t size)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	size_t n = 0;
	ssize_t r;
	while (n + 1 < size && (r = read(fd, out + n, size - 1 - n)) > 0)
		n += r;
	close(fd);
	out[n] = 0;
	return (int)n;
}

/*
 * Find DISK's virtio device (virtioN) and its MMIO window, then unbind it
 * from virtio_blk. /sys/block/DISK/device resolves to
 * .../virtio-mmio.K/virtioN, and /proc/iomem names the window
 * "virtio-mmio.K".
 */
static uint64_t find_and_unbind(const char *disk)
{
	char link[4096], path[256], iomem[16384];
	snprintf(path, sizeof(path), "/sys/block/%s/device", disk);
	if (!realpath(path, link))
		die(path);
	char *virtio = strrchr(link, '/');
	if (!virtio)
		die("parse of the device link");
	*virtio++ = 0;
	char *platform = strrchr(link, '/');
	platform = platform ? platform + 1 : link;
	if (slurp("/proc/iomem", iomem, sizeof(iomem)) < 0)
		die("read /proc/iomem");
	uint64_t base = 0;
	char needle[4200];
	snprintf(needle, sizeof(needle), " : %s\n", platform);
	for (char *line = iomem; line && *line;) {
		char *end = strchr(line, '\n');
		char *hit = strstr(line, needle);
		if (hit && (!end || hit < end)) {
			base = strtoull(line + strspn(line, " "), NULL, 16);
			break;
		}
		line = end ? end + 1 : NULL;
	}
	if (!base) {
		errno = ENOENT;
		die("lookup of the device's window in /proc/iomem");
	}
	int fd = open("/sys/bus/virtio/drivers/virtio_blk/unbind", O_WRONLY);
	if (fd < 0 || write(fd, virtio, strlen(virtio)) < 0)
		die("unbind from virtio_blk");
	close(fd);
	printf("hostile: %s is %s (%s) at %#llx, unbound from virtio_blk\n", disk, virtio, platform,
	       (unsigned long long)base);
	return base;
}

/* Reset the device and set queue 0 up on the ring page, as a driver does. */
static void setup(void)
{
	wr(R_STATUS, 0);
	for (int i = 0; rd(R_STATUS) != 0; i++)
		if (i > 1000000) {
			errno = EIO;
			die("reset (status stays non-zero)");
		}
	resets++;
	memset(ring, 0, PAGE);
	last_used = 0;
	wr(R_STATUS, S_ACKNOWLEDGE);
	wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
	wr(R_DEVICE_FEATURES_SEL, 1);
	uint32_t hi = rd(R_DEVICE_FEATURES);
	wr(R_DRIVER_FEATURES_SEL, 1);
	wr(R_DRIVER_FEATURES, hi & 1); /* VIRTIO_F_VERSION_1 only */
	wr(R_DRIVER_FEATURES_SEL, 0);
	wr(R_DRIVER_FEATURES, 0);
	wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	if (!(rd(R_STATUS) & S_FEATURES_OK)) {
		errno = EPROTO;
		die("feature negotiation");
	}
	wr(R_QUEUE_SEL, 0);
	if (rd(R_QUEUE_NUM_MAX) < QSIZE) {
		errno = ENOSPC;
		die("queue size");
	}
	wr(R_QUEUE_NUM, QSIZE);
	wr(R_QUEUE_DESC_LOW, (uint32_t)ring_pa);
	wr(R_QUEUE_DESC_HIGH, (uint32_t)(ring_pa >> 32));
	wr(R_QUEUE_DRIVER_LOW, (uint32_t)(ring_pa + 0x800));
	wr(R_QUEUE_DRIVER_HIGH, (uint32_t)((ring_pa + 0x800) >> 32));
	wr(R_QUEUE_DEVICE_LOW, (uint32_t)(ring_pa + 0xc00));
	wr(R_QUEUE_DEVICE_HIGH, (uint32_t)((ring_pa + 0xc00) >> 32));
	wr(R_QUEUE_READY, 1);
	wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

static void ack_interrupts(void)
{
	uint32_t isr = rd(R_INTERRUPT_STATUS);
	if (isr)
		wr(R_INTERRUPT_ACK, isr);
}

/*
 * Wait up to `seconds` for the device to use a chain or to ask for a reset.
 * Returns 1 (used), 2 (needs reset; the device has been set up again) or
 * 0 (nothing).
 */
static int wait_answer(double seconds)
{
	double end = now() + seconds;
	do {
		__sync_synchronize();
		if (USED_IDX != last_used) {
			last_used = USED_IDX;
			ack_interrupts();
			return 1;
		}
		if (rd(R_STATUS) & S_NEEDS_RESET) {
			setup();
			return 2;
		}
	} while (now() < end);
	return 0;
}

/* Offer the chain starting at descriptor `head` and notify queue 0. */
static void offer(uint16_t head)
{
	uint16_t idx = AVAIL_IDX;
	AVAIL_RING[idx % QSIZE] = head;
	__sync_synchronize();
	AVAIL_IDX = idx + 1;
	__sync_synchronize();
	wr(R_QUEUE_NOTIFY, 0);
}

static void set_desc(int i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	DESC[i].addr = addr;
	DESC[i].len = len;
	DESC[i].flags = flags;
	DESC[i].next = next;
}

/* A request header in the buffer page: type (0 in, 1 out), sector. */
static void header(uint32_t type, uint64_t sector)
{
	memcpy(buf, &type, 4);
	memset(buf + 4, 0, 4);
	memcpy(buf + 8, &sector, 8);
	buf[0x10] = 0xee;
}

/* A three-descriptor request: header, data (addr, len), status. */
static void request(uint32_t type, uint64_t sector, uint64_t addr, uint32_t len)
{
	header(type, sector);
	set_desc(0, buf_pa, 16, F_NEXT, 1);
	set_desc(1, addr, len, F_NEXT | (type == 0 ? F_WRITE : 0), 2);
	set_desc(2, buf_pa + 0x10, 1, F_WRITE, 0);
}

static const char *answer_name(int a)
{
	return a == 1 ? "used" : a == 2 ? "needs-reset" : "no-answer";
}

static void report(const char *what, int a)
{
	if (a == 1)
		printf("hostile: outside %s: %s len=%u status=%#x\n", what, answer_name(a),
		       USED_LEN((uint16_t)(last_used - 1) % QSIZE), buf[0x10]);
	else
		printf("hostile: outside %s: %s\n", what, answer_name(a));
}

static void mode_outside(void)
{
	static const struct {
		const char *what;
		uint64_t addr;
		uint32_t len;
	} bad[] = {
		{"past-ram", 0x7fff0000ULL, 512},
		{"mmio-hole", 0xd0000000ULL, 512},
		{"past-2^48", (1ULL << 48) + 0x1000, 512},
		{"top-of-address-space", 0xfffffffffffff000ULL, 512},
		{"wrapping", 0xffffffffffffff00ULL, 0x1000},
		{"4GiB-long", 0, 0xfffffe00U},
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		for (uint32_t type = 0; type < 2; type++) {
			char what[64];
			uint64_t addr = bad[i].addr ? bad[i].addr : buf_pa + 0x200;
			snprintf(what, sizeof(what), "%s-%s", bad[i].what, type ? "write" : "read");
			request(type, 0, addr, bad[i].len);
			offer(0);
			report(what, wait_answer(1.0));
		}
	}
	/* The header itself outside RAM. */
	request(0, 0, buf_pa + 0x200, 512);
	DESC[0].addr = 0x7ffff000ULL;
	offer(0);
	report("header-past-ram", wait_answer(1.0));
	/* Status descriptor outside RAM. */
	request(0, 0, buf_pa + 0x200, 512);
	DESC[2].addr = (1ULL << 48);
	offer(0);
	report("status-past-2^48", wait_answer(1.0));
	/* A sector past the end of the disk. */
	request(1, 1ULL << 40, buf_pa + 0x200, 512);
	offer(0);
	report("sector-past-end", wait_answer(1.0));
	/* A short header. */
	request(0, 0, buf_pa + 0x200, 512);
	DESC[0].len = 3;
	offer(0);
	report("short-header", wait_answer(1.0));
	/* Loops: 0 -> 1 -> 0, and 0 -> 0. */
	request(0, 0, buf_pa + 0x200, 512);
	DESC[1].next = 0;
	offer(0);
	report("loop-of-two", wait_answer(1.0));
	request(0, 0, buf_pa + 0x200, 512);
	DESC[0].next = 0;
	offer(0);
	report("self-loop", wait_answer(1.0));
	/* next past the table. */
	request(0, 0, buf_pa + 0x200, 512);
	DESC[1].next = 0xfff0;
	offer(0);
	report("next-out-of-range", wait_answer(1.0));
	/* An indirect table outside RAM, and one that is 4 GiB long. */
	set_desc(0, 0x7fff0000ULL, 48, F_INDIRECT, 0);
	offer(0);
	report("indirect-past-ram", wait_answer(1.0));
	set_desc(0, buf_pa + 0x200, 0xfffffff0U, F_INDIRECT, 0);
	offer(0);
	report("indirect-4GiB", wait_answer(1.0));
	/* A head index past the table. */
	request(0, 0, buf_pa + 0x200, 512);
	offer(0x8000);
	report("head-out-of-range", wait_answer(1.0));

	/* Now a well-behaved read of sector 0 and write of sector 1. */
	setup();
	request(0, 0, buf_pa + 0x200, 512);
	offer(0);
	int a = wait_answer(5.0);
	printf("hostile: good read %s status=%#x data=", answer_name(a), buf[0x10]);
	for (int i = 0; i < 16; i++)
		printf("%02x", buf[0x200 + i]);
	printf("\n");
	memset(buf + 0x200, 0x5a, 512);
	request(1, 1, buf_pa + 0x200, 512);
	offer(0);
	a = wait_answer(5.0);
	printf("hostile: good write %s status=%#x\n", answer_name(a), buf[0x10]);
}

static void mode_garbage(long rounds)
{
	unsigned used = 0, needs_reset = 0, silent = 0;
	for (long r = 0; r < rounds; r++) {
		for (int i = 0; i < QSIZE; i++) {
			DESC[i].addr = rnd();
			uint64_t x = rnd();
			DESC[i].len = (uint32_t)x;
			DESC[i].flags = (uint16_t)(x >> 32);
			DESC[i].next = (uint16_t)(x >> 48);
			/* Half the rounds: small next indices and RAM addresses. */
			if (r & 1) {
				DESC[i].next &= QSIZE - 1;
				DESC[i].flags &= F_NEXT | F_WRITE | F_INDIRECT;
				DESC[i].addr = buf_pa + (DESC[i].addr & (PAGE - 1));
				DESC[i].len &= 0x1fff;
			}
		}
		for (int i = 0; i < 16; i++)
			((volatile uint64_t *)buf)[i] = rnd();
		uint64_t x = rnd();
		AVAIL_FLAGS = (uint16_t)x;
		for (int i = 0; i < QSIZE; i++)
			AVAIL_RING[i] = (r & 1) ? (uint16_t)(rnd() & (QSIZE - 1)) : (uint16_t)rnd();
		/* Mostly a few entries; one round in four, any index at all. */
		AVAIL_IDX = (r & 3) == 3 ? (uint16_t)(x >> 16) : (uint16_t)(AVAIL_IDX + 1 + ((x >> 16) & 3));
		__sync_synchronize();
		wr(R_QUEUE_NOTIFY, 0);
		switch (wait_answer(0.005)) {
		case 1:
			used++;
			break;
		case 2:
			needs_reset++;
			break;
		default:
			silent++;
		}
		ack_interrupts();
	}
	printf("hostile: garbage %ld rounds: %u used, %u needs-reset, %u silent, %u resets\n", rounds, used,
	       needs_reset, silent, resets);
}

static void mode_notify(long count)
{
	double t = now();
	for (long i = 0; i < count; i++)
		wr(R_QUEUE_NOTIFY, 0);
	printf("hostile: notify %ld x queue 0 (empty) in %.1f s\n", count, now() - t);
	t = now();
	for (long i = 0; i < count / 100; i++) {
		wr(R_QUEUE_NOTIFY, 7);
		wr(R_QUEUE_NOTIFY, 0xffffffffU);
	}
	printf("hostile: notify %ld x queues 7 and 0xffffffff in %.1f s\n", count / 100, now() - t);
	printf("hostile: status after notify %#x\n", rd(R_STATUS));
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: hostile DISK MODE[=COUNT]...\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	uint64_t base = find_and_unbind(argv[1]);
	int fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0)
		die("open /dev/mem");
	regs = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);
	if (regs == MAP_FAILED)
		die("mmap of the device's window");
	if (rd(R_MAGIC) != 0x74726976 || rd(R_DEVICE_ID) != 2) {
		printf("hostile: not a virtio block device (magic %#x, version %u, id %u)\n", rd(R_MAGIC),
		       rd(R_VERSION), rd(R_DEVICE_ID));
		return 1;
	}
	ring = locked_page(&ring_pa);
	buf = locked_page(&buf_pa);
	printf("hostile: ring at %#llx, buffers at %#llx\n", (unsigned long long)ring_pa,
	       (unsigned long long)buf_pa);
	for (int i = 2; i < argc; i++) {
		char mode[32];
		long count = 0;
		snprintf(mode, sizeof(mode), "%s", argv[i]);
		char *eq = strchr(mode, '=');
		if (eq) {
			*eq = 0;
			count = strtol(eq + 1, NULL, 0);
		}
		double t = now();
		setup();
		if (!strcmp(mode, "garbage"))
			mode_garbage(count ? count : 2000);
		else if (!strcmp(mode, "outside"))
			mode_outside();
		else if (!strcmp(mode, "notify"))
			mode_notify(count ? count : 1000000);
		else {
			printf("hostile: unknown mode %s\n", mode);
			return 2;
		}
		wr(R_STATUS, 0);
		printf("hostile: done %s in %.1f s\n", mode, now() - t);
	}
	return 0;
}
