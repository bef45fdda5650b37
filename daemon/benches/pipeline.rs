//! What `security.strict_source` costs: a batch of 32 IPIP packets of 1400
//! bytes decapsulated through the dataplane's [`Pipeline`] with the check
//! off and on, against 10k /26 routes via 1000 nodes (each packet from the
//! node its inner source's block is routed via, so every one is delivered
//! and the strict case pays its lookup in full).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnetwork::Ipv4Network;
use tunl::dataplane::pipeline::{IcmpLimit, Pipeline, RX_BATCH};
use tunl::dataplane::stats::BatchCounts;
use tunl::dataplane::{NextHop, Policy};
use tunl_encap::{OuterChecksum, TokenBucket, TunnelSettings, checksum};
use tunl_io::PacketBuf;
use tunl_routing::Lpm;

const PACKET_LEN: usize = 1400;
const ROUTES: u32 = 10_000;
const LOCAL: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);
/// This node's block: the inner destinations.
const OWN_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 0);

/// A small deterministic generator (xorshift32), so runs are comparable.
fn xorshift(state: &mut u32) -> u32 {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    *state
}

/// The network of block `i`: /26 blocks carved from 10.0.0.0/8.
fn block(i: u32) -> u32 {
    u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i * 64
}

fn node(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + 1 + i % 1000)
}

/// An IPv4 header of `len` bytes in total at `p`, checksummed.
fn header(p: &mut [u8], len: usize, protocol: u8, src: Ipv4Addr, dst: Ipv4Addr) {
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 63;
    p[9] = protocol;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum::checksum(&p[..20]).to_be_bytes();
    p[10..12].copy_from_slice(&sum);
}

/// An IPIP packet from the node of block `b` around a TCP-shaped packet
/// from a pod of that block to a pod of ours.
fn outer(b: u32, host: u32) -> PacketBuf {
    let mut buf = PacketBuf::with_capacity(20 + PACKET_LEN);
    let p = buf.full_mut();
    let src = Ipv4Addr::from(block(b) + 1 + host % 62);
    let dst = Ipv4Addr::from(u32::from(OWN_BLOCK) + 1 + host % 62);
    header(&mut p[20..], PACKET_LEN, 6, src, dst);
    header(p, 20 + PACKET_LEN, 4, node(b), LOCAL);
    buf.set_len(20 + PACKET_LEN);
    buf
}

fn batch(seed: u32) -> Vec<PacketBuf> {
    let mut s = seed;
    (0..RX_BATCH)
        .map(|_| {
            let b = xorshift(&mut s) % ROUTES;
            outer(b, xorshift(&mut s))
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut lpm: Lpm<NextHop> = Lpm::new();
    for i in 0..ROUTES {
        let net = Ipv4Network::new(Ipv4Addr::from(block(i)), 26).expect("valid prefix");
        lpm.insert(net, NextHop::Node(node(i)));
    }
    let mut policy = Policy {
        settings: TunnelSettings::new(LOCAL),
        vias: Vec::new(),
        multipath: Default::default(),
        allow: Vec::new(),
        blocks: vec![Ipv4Network::new(OWN_BLOCK, 26).expect("valid prefix")],
        allow_nested: false,
        strict_source: false,
    };
    policy.set_vias((0..ROUTES).map(node));
    let bucket = Arc::new(Mutex::new(TokenBucket::new(100, 10)));
    let mut pipeline = Pipeline::new(7, IcmpLimit::new(bucket));
    let mut counts = BatchCounts::default();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(RX_BATCH as u64));
    for (name, strict) in [("decap", false), ("decap_strict_source", true)] {
        policy.strict_source = strict;
        let mut bufs = batch(2);
        // Decap leaves each buffer as it found it (inner packet at offset
        // 20, same length), so the batch can go round again; check once
        // that every packet is delivered, so both cases do the same work.
        let delivered = pipeline
            .decap(
                &mut bufs,
                &policy,
                &lpm,
                OuterChecksum::VerifiedByKernel,
                &mut counts,
            )
            .deliver();
        assert_eq!(delivered, RX_BATCH, "{name}: every packet delivered");
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = pipeline.decap(
                    &mut bufs,
                    &policy,
                    &lpm,
                    OuterChecksum::VerifiedByKernel,
                    &mut counts,
                );
                black_box(out.deliver());
            })
        });
    }
    group.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
