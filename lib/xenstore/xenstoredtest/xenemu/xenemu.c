/*
 * xenemu: lets the real xenstored, C (xenstored) or OCaml (oxenstored), run
 * without a hypervisor, for tests and the sandbox. Loaded with LD_PRELOAD, it
 * replaces the few libxenctrl, libxenevtchn and libxengnttab calls the
 * daemons make, serves the two /proc/xen files the C xenstored reads at
 * start, and gives oxenstored the host layout it expects.
 *
 * Domain lifecycle is driven from outside through a control directory
 * ($XENEMU_DIR, else $XENSTORED_RUNDIR):
 *   dead    - one domid per line: domains that no longer exist. Every other
 *             domid exists, so a dom0 INTRODUCE of a guest succeeds.
 *   evtchn  - a FIFO used as the event-channel fd. A record "g<domid>\n"
 *             is a notification from guest <domid> (its store ring has
 *             requests, or room for replies); any other byte delivers
 *             VIRQ_DOM_EXC, upon which xenstored re-checks its domains,
 *             fires @releaseDomain and removes the nodes of those listed in
 *             "dead", as on a real host when a domain dies.
 *   ring-N  - optional, a 4096-byte file: the store ring of guest N, mapped
 *             shared when N is introduced (see map_ring).
 *
 * oxenstored binds the fixed path /var/run/xenstored/socket. With
 * $XENEMU_RUNDIR_MOUNT set to that directory, the process moves into a
 * private mount namespace before main and finds the control directory
 * mounted there, so every instance has its own socket, reachable from
 * outside in the control directory. It also raises RLIMIT_NOFILE to
 * /proc/sys/fs/nr_open at start, which fails without CAP_SYS_RESOURCE:
 * setrlimit clamps a NOFILE request to the hard limit it may not exceed.
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
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "domctl.h"

#define EXPORT __attribute__((visibility("default")))
#define PAGE_SIZE 4096

/* Local event-channel ports. VIRQ_DOM_EXC gets VIRQ_PORT; the interdomain
 * channel of domain D gets DOM_PORT_BASE + D, so a guest's notification
 * (a "g<domid>" record on the FIFO) names its port without a lookup table,
 * and a rebind (INTRODUCE again) keeps it. */
#define VIRQ_PORT 10u
#define DOM_PORT_BASE 100u
#define MAX_DOMID 0x7FF0u /* DOMID_FIRST_RESERVED */
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
	if (max_doms < 1 || first_domid >= MAX_DOMID || domain_is_dead(first_domid))
		return 0;
	memset(di, 0, sizeof(*di));
	di->domid = first_domid;
	return 1;
}

/* oxenstored's Xenctrl.domain_getinfo asks (domid, 1) and fails unless the
 * one entry returned is that domain: a dead domain is simply absent, as once
 * Xen has destroyed it. */
EXPORT int xc_domain_getinfolist(void *xch, uint32_t first_domid, unsigned int max_doms,
				 void *info)
{
	struct domctl_getdomaininfo *di = info;
	(void)xch;
	if (max_doms < 1 || first_domid >= MAX_DOMID || domain_is_dead(first_domid)) {
		errno = ESRCH;
		return 0;
	}
	memset(di, 0, sizeof(*di));
	di->domain = (uint16_t)first_domid;
	di->flags = XEN_DOMINF_RUNNING;
	di->nr_online_vcpus = 1;
	return 1;
}

/* struct xc_error of xenctrl.h. The OCaml bindings read it to word the
 * exception a failed call raises (a dead domain's getinfo). */
static struct { int code; char message[1024]; } last_error;

EXPORT const void *xc_get_last_error(void *xch)
{
	(void)xch;
	return &last_error;
}

EXPORT const char *xc_error_code_to_desc(int code)
{
	return code == 0 ? "No error details" : "Unknown error";
}

/* A guest's store ring. If the control directory holds a file ring-<domid>
 * when the domain is introduced, the ring is that file, mapped shared: a
 * test then speaks as the guest, writing requests into it and reading the
 * replies, and writes "g<domid>\n" to evtchn to wake xenstored. Otherwise a
 * private zeroed page, so the ring always looks empty and xenstored never
 * reads requests from it. The C xenstored maps it by grant reference
 * (xengnttab_map_grant_ref), oxenstored by frame number
 * (xc_map_foreign_range); the frame number is not looked at. */
static void *map_ring(uint32_t domid)
{
	char path[PATH_MAX], name[32];
	void *p;
	int fd;

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

EXPORT void *xc_map_foreign_range(void *xch, uint32_t domid, int size, int prot,
				  unsigned long mfn)
{
	(void)xch; (void)prot; (void)mfn;
	if (size != PAGE_SIZE || domid >= MAX_DOMID) {
		errno = EINVAL;
		return NULL;
	}
	return map_ring(domid);
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
	(void)xce; (void)remote_port;
	if (domid >= MAX_DOMID) {
		errno = EINVAL;
		return -1;
	}
	return (int)(DOM_PORT_BASE + domid);
}

EXPORT int xenevtchn_bind_virq(void *xce, unsigned int virq)
{
	(void)xce; (void)virq;
	return (int)VIRQ_PORT;
}

EXPORT int xenevtchn_notify(void *xce, uint32_t port)
{
	(void)xce; (void)port;
	return 0;
}

/* Ports read from the FIFO and not yet reported. xenevtchn_pending reports
 * one port per call, as the kernel's evtchn device does; whatever else it
 * read waits here, each port at most once (a port's notifications
 * coalesce, as on Xen), and a byte it writes back into the FIFO keeps the
 * fd readable so that the daemon calls again. Wake-up bytes ('w') mean
 * nothing else. */
#define NPORTS (DOM_PORT_BASE + MAX_DOMID)
static uint32_t queue[NPORTS];
static unsigned int q_head, q_len;
static unsigned char queued[NPORTS];
static char partial[16]; /* a record cut by the end of a read */
static size_t partial_len;

static void enqueue(uint32_t port)
{
	if (port >= NPORTS || queued[port])
		return;
	queued[port] = 1;
	queue[(q_head + q_len++) % NPORTS] = port;
}

static void parse(const char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char c = buf[i];
		if (partial_len > 0) {
			if (c != '\n' && partial_len < sizeof(partial) - 1) {
				partial[partial_len++] = c;
				continue;
			}
			partial[partial_len] = 0;
			char *end;
			unsigned long d = strtoul(partial + 1, &end, 10);
			if (c == '\n' && end != partial + 1 && *end == 0 && d < MAX_DOMID)
				enqueue(DOM_PORT_BASE + (uint32_t)d);
			else
				enqueue(VIRQ_PORT);
			partial_len = 0;
			continue;
		}
		if (c == 'g')
			partial[partial_len++] = c;
		else if (c != 'w')
			enqueue(VIRQ_PORT);
	}
}

EXPORT int xenevtchn_pending(void *xce)
{
	char buf[4096];
	ssize_t n;
	uint32_t port;
	(void)xce;

	while ((n = read(evtchn_fd, buf, sizeof(buf))) > 0)
		parse(buf, (size_t)n);
	if (q_len == 0)
		/* Only wake-up bytes, or a record cut short: a spurious
		 * VIRQ_DOM_EXC is harmless, the daemon finds nothing changed. */
		return (int)VIRQ_PORT;
	port = queue[q_head];
	q_head = (q_head + 1) % NPORTS;
	q_len--;
	queued[port] = 0;
	if (q_len > 0 && write(evtchn_fd, "w", 1) < 0 && errno != EAGAIN)
		die("write evtchn: %s", strerror(errno));
	return (int)port;
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

EXPORT void *xengnttab_map_grant_ref(void *xgt, uint32_t domid, uint32_t ref, int prot)
{
	(void)xgt; (void)ref; (void)prot;
	return map_ring(domid);
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

/* ---- the host layout oxenstored expects ---- */

/* setrlimit: oxenstored sets RLIMIT_NOFILE's soft and hard limits to
 * /proc/sys/fs/nr_open at start (Poll's set_fd_limit) and dies if refused,
 * which it is where the hard limit is lower and the process lacks
 * CAP_SYS_RESOURCE, as in containers. A NOFILE request above the hard limit
 * is clamped to it: the daemon gets as many descriptors as it may have. */
typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);

EXPORT int setrlimit(__rlimit_resource_t resource, const struct rlimit *rl)
{
	static setrlimit_fn real;
	struct rlimit cur, clamped;

	if (!real)
		real = (setrlimit_fn)dlsym(RTLD_NEXT, "setrlimit");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if (resource == RLIMIT_NOFILE && getrlimit(RLIMIT_NOFILE, &cur) == 0 &&
	    cur.rlim_max != RLIM_INFINITY && rl->rlim_max > cur.rlim_max) {
		clamped.rlim_max = cur.rlim_max;
		clamped.rlim_cur = rl->rlim_cur < cur.rlim_max ? rl->rlim_cur : cur.rlim_max;
		rl = &clamped;
	}
	return real(resource, rl);
}

/* With $XENEMU_RUNDIR_MOUNT set (to /var/run/xenstored, where oxenstored
 * binds its socket whatever its configuration says), move into a private
 * mount namespace before main and mount the control directory there. Its
 * parent (/var/run, that is /run) gets a private tmpfs first, so the
 * directory need not exist on the host and a real xenstored's socket there
 * is never touched; the control directory is held open across that mount in
 * case it lies under /run. */
__attribute__((constructor)) static void private_rundir(void)
{
	const char *target = getenv("XENEMU_RUNDIR_MOUNT");
	char src[64], parent[PATH_MAX], *slash;
	int fd;

	if (!target || !*target)
		return;
	if (snprintf(parent, sizeof(parent), "%s", target) >= (int)sizeof(parent) ||
	    !(slash = strrchr(parent, '/')) || slash == parent)
		die("XENEMU_RUNDIR_MOUNT=%s: not an absolute path below /", target);
	*slash = 0;
	if (unshare(CLONE_NEWNS) < 0)
		die("unshare(CLONE_NEWNS): %s (a private mount namespace needs CAP_SYS_ADMIN)",
		    strerror(errno));
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("make / private: %s", strerror(errno));
	/* Opened inside the new namespace: a bind mount's source must be. */
	fd = open(ctl_dir(), O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", ctl_dir(), strerror(errno));
	if (mount("xenemu", parent, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
		die("mount tmpfs on %s: %s", parent, strerror(errno));
	if (mkdir(target, 0755) < 0 && errno != EEXIST)
		die("mkdir %s: %s", target, strerror(errno));
	snprintf(src, sizeof(src), "/proc/self/fd/%d", fd);
	if (mount(src, target, NULL, MS_BIND, NULL) < 0)
		die("bind %s on %s: %s", ctl_dir(), target, strerror(errno));
	close(fd);
	/* Whatever the daemon execs (nothing, short of a live update) must not
	 * try this again inside the namespace. */
	unsetenv("XENEMU_RUNDIR_MOUNT");
}
