//! Embedding tunl's crates in another overlay: route, encapsulate and
//! decapsulate pod packets with `tunl-routing` and `tunl-encap` alone, on
//! your own buffers, without a TUN device, sockets or root.
//!
//! Run: `cargo run -p tunl-encap --example embed`

use std::net::Ipv4Addr;

use tunl_encap::{
    DecapPolicy, EncapError, HEADROOM, IdentGenerator, Ipv4Packet, TunnelSettings, checksum,
    decapsulate, encapsulate, inner_destination,
};
use tunl_routing::{Ipv4Network, RouteWriter};

/// This node's view of who may send IPIP and which pods are local.
struct Node2 {
    peers: Vec<Ipv4Addr>,
    blocks: Vec<Ipv4Network>,
}

impl DecapPolicy for Node2 {
    fn source_allowed(&self, outer_src: Ipv4Addr) -> bool {
        self.peers.contains(&outer_src)
    }
    fn destination_local(&self, inner_dst: Ipv4Addr) -> bool {
        self.blocks.iter().any(|b| b.contains(inner_dst))
    }
}

/// An inner IPv4/ICMP echo request from `src` to `dst` after `HEADROOM`
/// bytes of free space, as a TUN read with headroom would leave it.
fn pod_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 28, 0x12, 0x34, 0x40, 0, ttl, 1, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum::checksum(&ip).to_be_bytes();
    ip[10..12].copy_from_slice(&sum);
    let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1];
    let sum = checksum::checksum(&icmp).to_be_bytes();
    icmp[2..4].copy_from_slice(&sum);
    let mut buf = vec![0u8; HEADROOM];
    buf.extend_from_slice(&ip);
    buf.extend_from_slice(&icmp);
    buf
}

fn main() {
    // node2.perf (172.16.36.5) routes node1.sit's block to it, as BIRD
    // would install `10.20.42.0/26 via 172.16.35.4 dev tunl0 onlink`.
    let node1 = Ipv4Addr::new(172, 16, 35, 4);
    let node2 = Ipv4Addr::new(172, 16, 36, 5);
    let mut routes = RouteWriter::new();
    routes.insert("10.20.42.0/26".parse().unwrap(), node1);
    let reader = routes.reader();

    // A pod packet: demo-hello-perf -> demo-hello-sit, TTL 63 after the
    // node forwarded it into the tunnel.
    let pod_perf = Ipv4Addr::new(10, 20, 105, 215);
    let pod_sit = Ipv4Addr::new(10, 20, 42, 31);
    let mut buf = pod_packet(pod_perf, pod_sit, 63);

    // Encap on node2: look up the block's node, write the outer header into
    // the headroom. No copy of the payload.
    let settings = TunnelSettings::new(node2);
    let mut ids = IdentGenerator::new(42);
    let dst = inner_destination(&buf[HEADROOM..]).expect("an IPv4 packet");
    let next_hop = reader.lookup(dst).expect("a route to the block");
    let outer = match encapsulate(
        &mut buf,
        HEADROOM,
        next_hop,
        settings.mtu,
        &settings,
        &mut ids,
    ) {
        Ok(range) => range,
        Err(EncapError::TooBig { mtu }) => panic!("answer ICMP frag-needed with MTU {mtu}"),
        Err(e) => panic!("dropped: {e}"),
    };
    let wire = &buf[outer.clone()];
    println!("on the wire ({} bytes, outer header first):", wire.len());
    for row in wire.chunks(16) {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        println!("  {}", hex.join(" "));
    }
    let outer_header = Ipv4Packet::new_checked(wire).expect("an IPv4 packet");
    let inner_header = Ipv4Packet::new_checked(outer_header.payload()).expect("an inner packet");
    println!(
        "outer {} -> {} protocol {} ttl {}; inner {} -> {}",
        outer_header.src(),
        outer_header.dst(),
        outer_header.protocol(),
        outer_header.ttl(),
        inner_header.src(),
        inner_header.dst(),
    );

    // Decap on node1: check the source and the inner packet, get the inner
    // packet's range in the same buffer.
    let policy = Node2 {
        peers: vec![node2],
        blocks: vec!["10.20.42.0/26".parse().unwrap()],
    };
    let mut received = wire.to_vec();
    let d = decapsulate(&mut received, &policy).expect("accepted");
    assert_eq!(&received[d.inner.clone()], &buf[HEADROOM..]);
    let inner = Ipv4Packet::new_checked(&received[d.inner.clone()]).expect("an IPv4 packet");
    println!(
        "decapsulated {} bytes from {}: the inner packet, unchanged ({} -> {}, ttl {})",
        inner.total_len(),
        d.outer_src,
        inner.src(),
        inner.dst(),
        inner.ttl(),
    );

    // A stranger's IPIP is refused, with a reason to count.
    let mut spoofed = wire.to_vec();
    spoofed[12..16].copy_from_slice(&[172, 16, 99, 9]);
    let mut header = Ipv4Packet::new_checked(&mut spoofed[..]).expect("valid");
    header.fill_checksum();
    match decapsulate(&mut spoofed, &policy) {
        Ok(_) => panic!("a stranger's packet was accepted"),
        Err(reason) => println!("from 172.16.99.9: dropped ({reason})"),
    }
}
