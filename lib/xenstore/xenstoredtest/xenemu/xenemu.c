/*
 * xenemu: lets the real C xenstored run without a hypervisor, for tests and
 * the sandbox. Loaded with LD_PRELOAD, it replaces the few libxenctrl,
 * libxenevtchn and libxengnttab calls xenstored makes and serves the two
 * /proc/xen files it reads at start.
 *
 * Domain lifecycle is driven from outside through a control directory
 * ($XENEMU_DIR, else $XENSTORED_RUNDIR):
 *   dead    - one domid per line: domains that no longer exist. Every other
 *             domid exists, so a dom0 INTRODUCE of a guest succeeds.
 *   evtchn  - a FIFO used as the event-channel fd. Writing a byte to it
 *             delivers VIRQ_DOM_EXC, upon which xenstored re-checks its
 *             domains, fires @releaseDomain and removes the nodes of those
 *             listed in "dead", as on a real host when a domain dies.
 *   ring-N  - optional, a 4096-byte file: the store ring of guest N, mapped
 *             shared when N is introduced (see xengnttab_map_grant_ref).
 *
 * The prototypes are declared here so that no Xen headers are needed; only
 * the leading fields of xc_dominfo_t that xenstored reads are written.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define PAGE_SIZE 4096

/* xenstored binds dom0's store channel and VIRQ_DOM_EXC; any distinct local
 * port numbers do, so hand them out from a counter. */
static uint32_t next_port = 10;
static uint32_t virq_port = (uint32_t)-1;
static int evtchn_fd = -1;

struct fake_handle { int magic; };
static struct fake_handle xc_handle = { 0x7863 };
static struct fake_handle xce_handle = { 0x7865 };
static struct fake_handle xgt_handle = { 0x7867 };

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "xenemu: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(70);
}

static const char *ctl_dir(void)
{
	const char *d = getenv("XENEMU_DIR");
	if (!d || !*d)
		d = getenv("XENSTORED_RUNDIR");
	if (!d || !*d)
		die("set XENEMU_DIR or XENSTORED_RUNDIR to the control directory");
	return d;
}

static void ctl_path(char *buf, size_t len, const char *name)
{
	if ((size_t)snprintf(buf, len, "%s/%s", ctl_dir(), name) >= len)
		die("control path too long");
}

/* domain_is_dead reads the dead list afresh on every call: it is small, and
 * reading it each time keeps the emulation stateless across restarts. */
static int domain_is_dead(uint32_t domid)
{
	char path[PATH_MAX], line[64];
	FILE *f;
	int dead = 0;

	ctl_path(path, sizeof(path), "dead");
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char *end;
		unsigned long v = strtoul(line, &end, 10);
		if (end != line && v == domid) {
			dead = 1;
			break;
		}
	}
	fclose(f);
	return dead;
}

/* ---- libxenctrl ---- */

struct dominfo_head {
	uint32_t domid;
	uint32_t ssidref;
	unsigned int flags; /* dying:1, crashed:1, shutdown:1, ... */
	unsigned int shutdown_reason;
};

EXPORT void *xc_interface_open(void *logger, void *dombuild_logger, unsigned flags)
{
	(void)logger; (void)dombuild_logger; (void)flags;
	return &xc_handle;
}

EXPORT int xc_interface_close(void *xch)
{
	(void)xch;
	return 0;
}

EXPORT int xc_domain_getinfo(void *xch, uint32_t first_domid, unsigned int max_doms,
			     void *info)
{
	struct dominfo_head *di = info;
	(void)xch;
	/* Report exactly the domain asked for, alive, unless it is dead: that is
	 * all xenstored 4.17 asks (first_domid, 1) and checks. */
	if (max_doms < 1 || first_domid >= 0x7FF0 || domain_is_dead(first_domid))
		return 0;
	memset(di, 0, sizeof(*di));
	di->domid = first_domid;
	return 1;
}

/* ---- libxenevtchn ---- */

static void *evtchn_open(void)
{
	char path[PATH_MAX];

	if (evtchn_fd >= 0)
		return &xce_handle;
	ctl_path(path, sizeof(path), "evtchn");
	if (mkfifo(path, 0600) < 0 && errno != EEXIST)
		die("mkfifo %s: %s", path, strerror(errno));
	/* O_RDWR keeps a writer open ourselves, so the FIFO never reports EOF
	 * when the control side closes it. */
	evtchn_fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (evtchn_fd < 0)
		die("open %s: %s", path, strerror(errno));
	return &xce_handle;
}

EXPORT void *xenevtchn_open(void *logger, unsigned flags)
{
	(void)logger; (void)flags;
	return evtchn_open();
}

EXPORT void *xenevtchn_fdopen(void *logger, int fd, unsigned flags)
{
	(void)logger; (void)fd; (void)flags;
	return evtchn_open();
}

EXPORT int xenevtchn_close(void *xce)
{
	(void)xce;
	return 0;
}

EXPORT int xenevtchn_fd(void *xce)
{
	(void)xce;
	return evtchn_fd;
}

EXPORT int xenevtchn_bind_interdomain(void *xce, uint32_t domid, uint32_t remote_port)
{
	(void)xce; (void)domid; (void)remote_port;
	return (int)next_port++;
}

EXPORT int xenevtchn_bind_virq(void *xce, unsigned int virq)
{
	(void)xce; (void)virq;
	virq_port = next_port++;
	return (int)virq_port;
}

EXPORT int xenevtchn_notify(void *xce, uint32_t port)
{
	(void)xce; (void)port;
	return 0;
}

EXPORT int xenevtchn_pending(void *xce)
{
	char buf[64];
	(void)xce;
	/* Drain whatever the control side wrote: one VIRQ_DOM_EXC makes
	 * xenstored re-check every domain, so several kills coalesce. */
	while (read(evtchn_fd, buf, sizeof(buf)) > 0)
		;
	return (int)virq_port;
}

EXPORT int xenevtchn_unmask(void *xce, uint32_t port)
{
	(void)xce; (void)port;
	return 0;
}

EXPORT int xenevtchn_unbind(void *xce, uint32_t port)
{
	(void)xce; (void)port;
	return 0;
}

/* ---- libxengnttab ---- */

EXPORT void *xengnttab_open(void *logger, unsigned flags)
{
	(void)logger; (void)flags;
	return &xgt_handle;
}

EXPORT int xengnttab_close(void *xgt)
{
	(void)xgt;
	return 0;
}

EXPORT int xengnttab_set_max_grants(void *xgt, uint32_t nr)
{
	(void)xgt; (void)nr;
	return 0;
}

/* A guest's store ring. If the control directory holds a file ring-<domid>
 * when the domain is introduced, the ring is that file, mapped shared: a
 * test then speaks as the guest, writing requests into it and reading the
 * replies, and writes a byte to evtchn to wake xenstored, which looks at
 * every ring on each pass. Otherwise a private zeroed page, so the ring
 * always looks empty and xenstored never reads requests from it. */
EXPORT void *xengnttab_map_grant_ref(void *xgt, uint32_t domid, uint32_t ref, int prot)
{
	char path[PATH_MAX], name[32];
	void *p;
	int fd;
	(void)xgt; (void)ref; (void)prot;
	snprintf(name, sizeof(name), "ring-%u", domid);
	ctl_path(path, sizeof(path), name);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		p = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
		return p == MAP_FAILED ? NULL : p;
	}
	p = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

EXPORT int xengnttab_unmap(void *xgt, void *start, uint32_t count)
{
	(void)xgt;
	return munmap(start, (size_t)count * PAGE_SIZE);
}

/* ---- /proc/xen/xsd_port and /proc/xen/xsd_kva ---- */

static int memfd_with(const char *name, const void *data, size_t len, size_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	if (ftruncate(fd, (off_t)size) < 0 ||
	    (len && pwrite(fd, data, len, 0) != (ssize_t)len)) {
		close(fd);
		return -1;
	}
	return fd;
}

static int fake_proc(const char *path)
{
	if (strcmp(path, "/proc/xen/xsd_port") == 0)
		return memfd_with("xsd_port", "1\n", 2, 2);
	if (strcmp(path, "/proc/xen/xsd_kva") == 0)
		return memfd_with("xsd_kva", NULL, 0, PAGE_SIZE);
	return -2;
}

typedef int (*open_fn)(const char *, int, ...);

static int do_open(const char *sym, const char *path, int flags, va_list ap)
{
	static open_fn real_open, real_open64;
	open_fn *real = strcmp(sym, "open") == 0 ? &real_open : &real_open64;
	mode_t mode = 0;
	int fd;

	if (path && (fd = fake_proc(path)) != -2)
		return fd;
	if (flags & (O_CREAT | O_TMPFILE))
		mode = va_arg(ap, mode_t);
	if (!*real)
		*real = (open_fn)dlsym(RTLD_NEXT, sym);
	if (!*real) {
		errno = ENOSYS;
		return -1;
	}
	return (*real)(path, flags, mode);
}

EXPORT int open(const char *path, int flags, ...)
{
	va_list ap;
	int fd;
	va_start(ap, flags);
	fd = do_open("open", path, flags, ap);
	va_end(ap);
	return fd;
}

EXPORT int open64(const char *path, int flags, ...)
{
	va_list ap;
	int fd;
	va_start(ap, flags);
	fd = do_open("open64", path, flags, ap);
	va_end(ap);
	return fd;
}
