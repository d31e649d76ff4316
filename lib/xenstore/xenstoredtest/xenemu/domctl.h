/* The one structure of Xen's ABI that both preload libraries (xenemu.c
 * for xenstored, xlctrl.c for xl) write whole. */
#ifndef MTWATCH_DOMCTL_H
#define MTWATCH_DOMCTL_H

#include <stdint.h>

/* xc_domaininfo_t, that is struct xen_domctl_getdomaininfo of Xen 4.17's
 * public/domctl.h with x86's xen_arch_domainconfig: written whole, so its
 * size must be exact. */
struct domctl_getdomaininfo {
	uint16_t domain;
	uint16_t pad1;
	uint32_t flags;
	uint64_t tot_pages, max_pages, outstanding_pages, shr_pages, paged_pages;
	uint64_t shared_info_frame, cpu_time;
	uint32_t nr_online_vcpus, max_vcpu_id, ssidref;
	uint8_t handle[16];
	uint32_t cpupool;
	uint8_t gpaddr_bits, pad2[7];
	uint32_t emulation_flags, misc_flags;
};
_Static_assert(sizeof(struct domctl_getdomaininfo) == 112, "xc_domaininfo_t layout");

#define XEN_DOMINF_RUNNING (1u << 5)

#endif
