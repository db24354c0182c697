// SPDX-License-Identifier: GPL-2.0
/*
 * Checks /dev/steppps's poll() contract inside the test guest:
 *   1. a freshly opened file is readable at once;
 *   2. after a read it is not readable until the generation moves;
 *   3. poll() wakes (within TIMEOUT_S) once it moves, and the next read shows
 *      a larger generation.
 * The caller makes the generation move by loading a CPU (the load average
 * changes at the kernel's next 5-second update).
 * Prints "steppps-poll: ok ..." and exits 0, or says what failed and exits 1.
 * Built static so it runs in a busybox initramfs.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_S 90

static void fail(const char *what)
{
	printf("steppps-poll: FAIL: %s (%s)\n", what, strerror(errno));
	exit(1);
}

static int readable(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int n = poll(&p, 1, timeout_ms);

	if (n < 0)
		fail("poll");
	return n == 1 && (p.revents & POLLIN);
}

/* Reads the record from offset 0 and returns its generation. */
static unsigned long long generation(int fd)
{
	char buf[1024];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	unsigned long long g;

	if (n <= 0)
		fail("read");
	buf[n] = '\0';
	if (sscanf(buf, "generation %llu", &g) != 1)
		fail("no generation line");
	return g;
}

int main(void)
{
	int fd = open("/dev/steppps", O_RDONLY);
	unsigned long long before, after;
	struct timespec t0, t1;

	if (fd < 0)
		fail("open /dev/steppps");
	if (!readable(fd, 0))
		fail("a fresh open is not readable");
	before = generation(fd);
	/* Readable again right after a read only if the generation moved in between. */
	if (readable(fd, 0) && generation(fd) == before)
		fail("readable after a read with no new generation");
	before = generation(fd);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (!readable(fd, TIMEOUT_S * 1000))
		fail("poll did not wake within the timeout");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	after = generation(fd);
	if (after <= before)
		fail("woken, but the generation did not move");
	printf("steppps-poll: ok: generation %llu -> %llu, poll woke after %.1f s\n",
	       before, after, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	return 0;
}
