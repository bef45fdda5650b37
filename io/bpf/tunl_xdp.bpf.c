// SPDX-License-Identifier: MIT OR Apache-2.0
//
// tunl's XDP program, attached by tunl-io (io/src/xdp/) to the underlay
// device that holds tunnel.local.
//
// It hands an IPIP frame to the AF_XDP socket (XSK) of the RX queue it
// arrived on only when the frame is exactly what tunl's raw IPIP socket
// would have been given by the kernel, and small enough for one UMEM chunk:
//
//   - Ethernet type IPv4, IPv4 protocol 4 (IPIP);
//   - the outer destination is tunnel.local (tunl_local_addr, set by the
//     loader before the program is loaded);
//   - no IPv4 options (ihl == 5): tunl's XSK path does not parse them;
//   - not a fragment (MF clear, offset 0): the kernel reassembles
//     fragments for the raw socket, XDP sees them one by one;
//   - the frame fits one UMEM chunk (TUNL_XSK_FRAME - XDP_PACKET_HEADROOM
//     bytes): longer frames (GRO super-packets in generic mode) would be
//     dropped by the XSK.
//
// Everything else returns XDP_PASS and goes up the stack as if no program
// were attached, IPIP included: the raw socket still gets it. A frame whose
// queue has no socket in tunl_xsks passes too (the flags argument of
// bpf_redirect_map is the action for an empty slot).
//
// tunl_stats counts per CPU, by the TUNL_STAT_* index below.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* UMEM chunk size, from io/build.rs (one value for both sides). */
#ifndef TUNL_XSK_FRAME
#error "TUNL_XSK_FRAME must be defined by the build"
#endif
/* The longest frame one chunk takes in copy mode: the kernel keeps
 * XDP_PACKET_HEADROOM (256) bytes in front of it. A compile-time constant:
 * without CAP_PERFMON the verifier refuses packet-pointer arithmetic with a
 * register, even one it knows. */
#define TUNL_MAX_FRAME (TUNL_XSK_FRAME - 256)
/* Entries of tunl_xsks: the highest RX queue index that can get a socket,
 * plus one (io/src/xdp/program.rs, MAX_QUEUES). */
#define TUNL_MAX_QUEUES 64

/* tunl_stats indexes (io/src/xdp/program.rs, ProgramStats). */
#define TUNL_STAT_REDIRECTED 0 /* IPIP for tunl, handed to an XSK */
#define TUNL_STAT_NO_SOCKET 1  /* IPIP for tunl, its queue had no XSK: passed */
#define TUNL_STAT_PASSED 2     /* anything else: passed */
#define TUNL_STATS 3

/* tunnel.local in network byte order; .rodata, so the verifier sees a
 * constant. Set by the loader (aya's EbpfLoader::override_global). */
volatile const __u32 tunl_local_addr = 0;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, TUNL_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} tunl_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TUNL_STATS);
	__type(key, __u32);
	__type(value, __u64);
} tunl_stats SEC(".maps");

static __always_inline void count(__u32 key)
{
	__u64 *v = bpf_map_lookup_elem(&tunl_stats, &key);

	if (v)
		*v += 1;
}

SEC("xdp")
int tunl_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	long action;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		goto pass;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_IPIP)
		goto pass;
	if (ip->daddr != tunl_local_addr || ip->ihl != 5 ||
	    (ip->frag_off & bpf_htons(0x3fff)) ||
	    data + TUNL_MAX_FRAME < data_end)
		goto pass;

	action = bpf_redirect_map(&tunl_xsks, ctx->rx_queue_index, XDP_PASS);
	count(action == XDP_REDIRECT ? TUNL_STAT_REDIRECTED : TUNL_STAT_NO_SOCKET);
	return action;
pass:
	count(TUNL_STAT_PASSED);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
