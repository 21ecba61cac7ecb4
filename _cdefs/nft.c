/* libnftables for lxcbind.lxc.nftables (declarations in nft.h); <sched.h> for setns()/CLONE_NEWNET. */
#include <sched.h>
#include <nftables/libnftables.h>
