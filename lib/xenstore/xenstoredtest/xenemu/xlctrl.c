/*
 * xlctrl: lets the unmodified `xl devd` run without a hypervisor, for the
 * benchmarks. Loaded with LD_PRELOAD into xl, it replaces the libxenctrl
 * calls made on xl devd's path that would need /dev/xen/privcmd:
 * libxl_ctx_alloc opens a libxc handle (xc_interface_open), xl's start-up
 * sizes its cpumaps (xc_get_max_cpus, via libxl_get_max_cpus) and asks the
 * hypervisor's version (xc_version, every XENVER_* libxl_get_version_info
 * in tools/libs/light/libxl.c asks). Removing a device as domain 0,
 * libxl__initiate_device_generic_remove (libxl_device.c) asks for the
 * frontend domain's info (libxl_domain_info: xc_domain_getinfolist, then
 * xc_flask_sid_to_context for its label). Everything else xl devd does goes
 * to xenstored ($XENSTORED_PATH) or is fork/exec and SIGCHLD, which are
 * real.
 *
 * A domain exists unless its domid is listed in $XENEMU_DIR/dead, the file
 * through which xenemu learns of deaths (see xenemu.c): xl devd and
 * xenstored see the same domains.
 *
 * The layouts are those of xen/include/public/version.h and domctl.h
 * (Xen 4.17); no Xen headers are needed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "domctl.h"

#define EXPORT __attribute__((visibility("default")))

/* Xen 4.17, as the Debian tools expect. */
#define EMU_MAJOR 4
#define EMU_MINOR 17
#define EMU_CPUS 2
#define PAGE_SIZE 4096

/* xl devd's scripts inherit its environment (libxl__exec): without this,
 * every sh and xenstore-write they start would load this library too, a
 * cost the runner compared with xl devd does not pay. The dynamic loader
 * has read LD_PRELOAD before any constructor runs. */
__attribute__((constructor)) static void forget_preload(void)
{
	unsetenv("LD_PRELOAD");
}

struct fake_handle { int magic; };
static struct fake_handle xc_handle = { 0x786c };

EXPORT void *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags)
{
	(void)logger; (void)dombuild_logger; (void)open_flags;
	return &xc_handle;
}

EXPORT int xc_interface_close(void *xch)
{
	(void)xch;
	return 0;
}

EXPORT int xc_get_max_cpus(void *xch)
{
	(void)xch;
	return EMU_CPUS;
}

static void put(void *arg, size_t size, const char *s)
{
	if (arg) {
		memset(arg, 0, size);
		strncpy(arg, s, size - 1);
	}
}

EXPORT int xc_version(void *xch, int cmd, void *arg)
{
	(void)xch;
	switch (cmd) {
	case 0: /* XENVER_version */
		return EMU_MAJOR << 16 | EMU_MINOR;
	case 1: /* XENVER_extraversion: char[16] */
		put(arg, 16, ".0-emu");
		return 0;
	case 2: /* XENVER_compile_info: char[64], [16], [32], [32] */
		if (arg) {
			char *p = arg;
			memset(p, 0, 64 + 16 + 32 + 32);
			strcpy(p, "gcc");
			strcpy(p + 64, "mtwatch");
			strcpy(p + 64 + 16, "xlctrl");
			strcpy(p + 64 + 16 + 32, "-");
		}
		return 0;
	case 3: /* XENVER_capabilities: char[1024] */
		put(arg, 1024, "xen-3.0-x86_64");
		return 0;
	case 4: /* XENVER_changeset: char[64] */
		put(arg, 64, "xlctrl");
		return 0;
	case 5: /* XENVER_platform_parameters: unsigned long virt_start */
		if (arg)
			memset(arg, 0, sizeof(unsigned long));
		return 0;
	case 7: /* XENVER_pagesize */
		return PAGE_SIZE;
	case 9: /* XENVER_commandline: char[1024] */
		put(arg, 1024, "");
		return 0;
	case 10: /* XENVER_build_id: none, as a hypervisor built without one */
		return -ENODATA;
	default:
		errno = ENOSYS;
		return -1;
	}
}

#define DOMID_FIRST_RESERVED 0x7ff0

static int dead(uint32_t domid)
{
	const char *dir = getenv("XENEMU_DIR");
	char path[4096], line[32];
	FILE *f;
	int found = 0;

	if (!dir)
		return 0;
	snprintf(path, sizeof(path), "%s/dead", dir);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (!found && fgets(line, sizeof(line), f))
		found = strtoul(line, NULL, 10) == domid;
	fclose(f);
	return found;
}

/* The live domains from first_domain on, at most max_domains of them: the
 * emulation has no list of domains, so it answers for first_domain alone,
 * which is what libxl_domain_info asks. */
EXPORT int xc_domain_getinfolist(void *xch, uint32_t first_domain, unsigned int max_domains, void *info)
{
	struct domctl_getdomaininfo *di = info;

	(void)xch;
	if (max_domains == 0 || first_domain >= DOMID_FIRST_RESERVED || dead(first_domain))
		return 0;
	memset(di, 0, sizeof(*di));
	di->domain = first_domain;
	di->flags = XEN_DOMINF_RUNNING;
	di->nr_online_vcpus = 1;
	di->max_pages = di->tot_pages = 131072;
	return 1;
}

/* No XSM/FLASK: as a hypervisor built without it. */
EXPORT int xc_flask_sid_to_context(void *xch, int sid, char *buf, uint32_t size)
{
	(void)xch; (void)sid; (void)buf; (void)size;
	errno = ENOSYS;
	return -1;
}
