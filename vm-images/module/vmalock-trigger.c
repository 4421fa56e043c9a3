// SPDX-License-Identifier: GPL-2.0
/*
 * vmalock-trigger: run vmalock_test modes from a guest.
 *
 *   vmalock-trigger            list the modes this kernel supports ("MODE RULE")
 *   vmalock-trigger MODE...    run each MODE in this process, in order
 *   vmalock-trigger -l MS MODE...
 *                              linger MS milliseconds before the first mode and after
 *                              the last, so that periodic VMA snapshots (vmalock
 *                              --snapshot-ms) see this process's VMAs before and after
 *
 * A plain mode is one write() to the trigger file.  A "fault-*" mode is armed by
 * the write and runs when this process takes a user-mode page fault on a
 * one-page mapping of the same open file; the page then holds the result as
 * "%d\n" (0 ok, -EAGAIN = the fault did not come in under the per-VMA lock:
 * retried here).  Exit status 0 if every mode returned 0.
 *
 * Build: gcc -O2 -Wall -static -o vmalock-trigger vmalock-trigger.c
 * Env:   VMALOCK_TRIGGER overrides /sys/kernel/debug/vmalock_test/trigger.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static const char *trigger_path(void)
{
	const char *p = getenv("VMALOCK_TRIGGER");

	return p && *p ? p : "/sys/kernel/debug/vmalock_test/trigger";
}

/* Returns 0 or a negative errno. */
static int run_mode(const char *mode)
{
	int is_fault = strncmp(mode, "fault-", 6) == 0;
	long page = sysconf(_SC_PAGESIZE);
	int tries = is_fault ? 5 : 1;
	int res = -EIO;

	while (tries--) {
		int fd = open(trigger_path(), O_RDWR | O_CLOEXEC);
		volatile const char *p;
		char buf[32];
		int i;

		if (fd < 0)
			return -errno;
		if (write(fd, mode, strlen(mode)) < 0) {
			res = -errno;
			close(fd);
			return res;
		}
		if (!is_fault) {
			close(fd);
			return 0;
		}
		p = mmap(NULL, page, PROT_READ, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			res = -errno;
			close(fd);
			return res;
		}
		/* This load is the user-mode fault that runs the mode. */
		for (i = 0; i < (int)sizeof(buf) - 1 && p[i] && p[i] != '\n'; i++)
			buf[i] = p[i];
		buf[i] = '\0';
		res = atoi(buf);
		munmap((void *)p, page);
		close(fd);
		if (res != -EAGAIN)
			break;
	}
	return res;
}

static void linger(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	if (ms > 0)
		nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	int i, failed = 0, linger_ms = 0;

	if (argc < 2) {
		char buf[4096];
		ssize_t n;
		int fd = open(trigger_path(), O_RDONLY | O_CLOEXEC);

		if (fd < 0) {
			perror(trigger_path());
			return 2;
		}
		while ((n = read(fd, buf, sizeof(buf))) > 0)
			fwrite(buf, 1, n, stdout);
		close(fd);
		return 0;
	}
	i = 1;
	if (argc > 3 && strcmp(argv[1], "-l") == 0) {
		linger_ms = atoi(argv[2]);
		i = 3;
	}
	linger(linger_ms);
	for (; i < argc; i++) {
		int res = run_mode(argv[i]);

		if (res)
			failed = 1;
		printf("%s: %d%s%s\n", argv[i], res, res ? " " : "",
		       res ? strerror(-res) : "");
	}
	linger(linger_ms);
	return failed;
}
