/* cdef of libnftables (<nftables/libnftables.h>): lxcbind drives nftables in-process, one
 * context per lxcbind.lxc.nftables.Nft, instead of spawning the nft program.  Only what it calls.
 * setns() is here because a context talks to the netns of the thread that opened its netlink
 * socket: Nft(netns=...) moves a dedicated worker thread into the target namespace first. */

struct nft_ctx;

#define NFT_CTX_DEFAULT ...
#define CLONE_NEWNET ...

struct nft_ctx *nft_ctx_new(uint32_t flags);
void nft_ctx_free(struct nft_ctx *ctx);
int nft_ctx_buffer_output(struct nft_ctx *ctx);
int nft_ctx_buffer_error(struct nft_ctx *ctx);
const char *nft_ctx_get_output_buffer(struct nft_ctx *ctx);
const char *nft_ctx_get_error_buffer(struct nft_ctx *ctx);
int nft_run_cmd_from_buffer(struct nft_ctx *nft, const char *buf);

int setns(int fd, int nstype);
