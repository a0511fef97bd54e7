/* Test program for tests/netns/test_xsk.py: every IPv4 UDP frame goes to the AF_XDP socket of the rx queue it
 * arrived on (XSKMAP keyed by rx_queue_index), carrying 4 bytes of XDP metadata (META_MAGIC | rx queue) the
 * way the classifier carries struct xs_meta. Everything else, and frames for a queue without a socket, go to
 * the kernel (XDP_PASS is redirect_map's fallback action). Loaded with bcc. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>

#define META_MAGIC 0x58530000

BPF_XSKMAP(xsks, 4);

int xsk_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 *meta;

	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta)))
		return XDP_PASS;
	meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > (void *)(long)ctx->data)
		return XDP_PASS;
	*meta = META_MAGIC | ctx->rx_queue_index;
	return xsks.redirect_map(ctx->rx_queue_index, XDP_PASS);
}
