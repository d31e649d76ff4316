/*
 * cbench: the libxenstore side of the lib/xenstore benchmarks. It links
 * Debian's C libxenstore (libxenstore4) and is driven by bench_test.go over
 * stdin/stdout, so that both clients run against the same xenstored in the
 * same run and only the measured loop is timed:
 *
 *   cbench read <path> <threads>   one handle shared by <threads> threads;
 *                                  per "N" line on stdin, N xs_read calls in
 *                                  total, then "done" on stdout
 *   cbench watch <path>            xs_watch(path); per "<sentinel>" line,
 *                                  receive events until one for <sentinel>,
 *                                  then "done <events> <cpu-ns> <ctxsw>":
 *                                  the process's CPU time (all threads) and
 *                                  context switches over that loop
 *
 * Prototypes are declared here (not from xenstore.h) so that only the
 * runtime library is needed: gcc -O2 -o cbench cbench.c -l:libxenstore.so.4 -lpthread
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

struct xs_handle;
typedef uint32_t xs_transaction_t;
#define XBT_NULL 0
#define XS_WATCH_PATH 0

extern struct xs_handle *xs_open(unsigned long flags);
extern void xs_close(struct xs_handle *h);
extern void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len);
extern bool xs_watch(struct xs_handle *h, const char *path, const char *token);
extern char **xs_read_watch(struct xs_handle *h, unsigned int *num);

static struct xs_handle *xsh;
static const char *path;

struct job {
	pthread_t thread;
	long n;
	int failed;
};

static void *reader(void *arg)
{
	struct job *j = arg;
	for (long i = 0; i < j->n; i++) {
		unsigned int len;
		void *v = xs_read(xsh, XBT_NULL, path, &len);
		if (!v) {
			j->failed = 1;
			return NULL;
		}
		free(v);
	}
	return NULL;
}

static int run_read(int threads)
{
	char line[64];
	struct job *jobs = calloc(threads, sizeof(*jobs));
	if (!jobs)
		return 1;
	printf("ready\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		long n = atol(line);
		for (int t = 0; t < threads; t++) {
			jobs[t].n = n / threads + (t < n % threads);
			jobs[t].failed = 0;
			if (pthread_create(&jobs[t].thread, NULL, reader, &jobs[t]))
				return 1;
		}
		int failed = 0;
		for (int t = 0; t < threads; t++) {
			pthread_join(jobs[t].thread, NULL);
			failed |= jobs[t].failed;
		}
		if (failed) {
			fprintf(stderr, "cbench: xs_read %s failed\n", path);
			return 1;
		}
		printf("done\n");
		fflush(stdout);
	}
	return 0;
}

/* usage: CPU time in ns and context switches of the whole process. */
static void usage(long long *cpu_ns, long *ctxsw)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	*cpu_ns = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
		  (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
	*ctxsw = ru.ru_nvcsw + ru.ru_nivcsw;
}

static int run_watch(void)
{
	char line[4096];
	unsigned int num;
	if (!xs_watch(xsh, path, "cbench")) {
		perror("cbench: xs_watch");
		return 1;
	}
	char **ev = xs_read_watch(xsh, &num); /* the initial event */
	if (!ev)
		return 1;
	free(ev);
	printf("ready\n");
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, "\n")] = 0;
		long events = 0, sw0, sw1;
		long long cpu0, cpu1;
		usage(&cpu0, &sw0);
		for (;;) {
			ev = xs_read_watch(xsh, &num);
			if (!ev) {
				perror("cbench: xs_read_watch");
				return 1;
			}
			events++;
			int end = strcmp(ev[XS_WATCH_PATH], line) == 0;
			free(ev);
			if (end)
				break;
		}
		usage(&cpu1, &sw1);
		printf("done %ld %lld %ld\n", events, cpu1 - cpu0, sw1 - sw0);
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: cbench read <path> <threads> | cbench watch <path>\n");
		return 2;
	}
	path = argv[2];
	xsh = xs_open(0);
	if (!xsh) {
		perror("cbench: xs_open");
		return 1;
	}
	int rc = 2;
	if (strcmp(argv[1], "read") == 0 && argc == 4)
		rc = run_read(atoi(argv[3]));
	else if (strcmp(argv[1], "watch") == 0)
		rc = run_watch();
	xs_close(xsh);
	return rc;
}
