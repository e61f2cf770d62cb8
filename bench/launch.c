/*
 * Tiny launcher for bench/boot-vs-container:
 *   launch FD COMMAND [ARG]...
 * runs COMMAND as a child and reports on file descriptor FD:
 *   "pid PID\n"                         as soon as the child is forked
 *   "rusage MAXRSS_KIB UTIME_US STIME_US STATUS\n"   after it exited
 * (STATUS: exit code, or 128 + signal). Exits with the child's STATUS.
 *
 * Why not let Python fork the command itself: Linux carries the peak RSS of
 * the address space a process had before exec() into its ru_maxrss, so a
 * command forked by the Python harness would report at least the harness's
 * own RSS (tens of MiB). Forked from this static binary, the floor is this
 * binary's RSS (a few hundred KiB).
 *
 * Built by the benchmark at start: cc -O2 -static -o launch launch.c
 * (into its temporary directory).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: launch FD COMMAND [ARG]...\n");
		return 2;
	}
	FILE *report = fdopen(atoi(argv[1]), "w");
	if (!report) {
		perror("launch: report fd");
		return 2;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("launch: fork");
		return 2;
	}
	if (pid == 0) {
		fclose(report);
		execvp(argv[2], argv + 2);
		fprintf(stderr, "launch: exec %s: %s\n", argv[2], strerror(errno));
		_exit(127);
	}
	fprintf(report, "pid %d\n", (int)pid);
	fflush(report);
	int status;
	struct rusage ru;
	while (wait4(pid, &status, 0, &ru) < 0) {
		if (errno != EINTR) {
			perror("launch: wait4");
			return 2;
		}
	}
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	fprintf(report, "rusage %ld %lld %lld %d\n", ru.ru_maxrss,
		(long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
		(long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec, code);
	fclose(report);
	return code;
}
