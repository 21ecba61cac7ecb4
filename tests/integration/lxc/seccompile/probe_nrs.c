/* The table of one ABI from the kernel's own headers, for the names in names.h (written by
 * the test: every name of the profile, and the allowed calls the probe samples). */
#if defined(PROBE_I386)
#include <asm/unistd_32.h>
#define TABLE probe_nrs_i386
#elif defined(PROBE_X32)
#ifndef __X32_SYSCALL_BIT
#define __X32_SYSCALL_BIT 0x40000000
#endif
#include <asm/unistd_x32.h>
#define TABLE probe_nrs_x32
#else
#include <asm/unistd_64.h>
#define TABLE probe_nrs_x86_64
#endif
#include "probe.h"

/* Calls newer than Debian 12's kernel headers (the kernel may well have them): the number is
 * the same on every ABI since the tables were unified (424+), x32 with its bit. */
#ifndef __NR_fchmodat2
#if defined(PROBE_X32)
#define __NR_fchmodat2 (__X32_SYSCALL_BIT + 452)
#else
#define __NR_fchmodat2 452
#endif
#endif

const struct probe_nr TABLE[] = {
#include "names.h"
    {0, 0},
};
