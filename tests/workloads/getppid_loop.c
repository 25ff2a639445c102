/*
 * getppid_loop: a workload that makes an exact number of getppid() calls.
 *
 * Usage: getppid_loop NAME CALLS
 *   NAME   the process's comm (at most 15 bytes), so that a trace can keep its calls alone
 *   CALLS  how many getppid() calls to make
 * Prints the mean time of one call in nanoseconds (benchmarks/ingest.py reads it).
 *
 * getppid() is the cheapest syscall there is: it does almost nothing in the kernel, so a
 * tracepoint on sys_enter_getppid sees exactly CALLS events of this process, as fast as the
 * machine can make them. Built by the tests and benchmarks with gcc -O2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s NAME CALLS\n", argv[0]);
		return 2;
	}
	long n = atol(argv[2]);
	struct timespec a, b;
	prctl(PR_SET_NAME, argv[1]);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		getppid();
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f\n", n ? ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n : 0.0);
	return 0;
}
