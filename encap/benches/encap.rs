//! Encap and decap of batches of 32 packets of 1400 bytes, and the route
//! lookup + encap a TX worker does per batch, against 10k /26 routes.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnetwork::Ipv4Network;
use tunl_encap::{
    DecapPolicy, HEADROOM, IdentGenerator, TunnelSettings, checksum, decapsulate, encapsulate,
    inner_destination,
};
use tunl_routing::Lpm;

const BATCH: usize = 32;
const PACKET_LEN: usize = 1400;
const ROUTES: u32 = 10_000;
const LOCAL: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);

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

/// An IPv4/TCP-shaped packet of PACKET_LEN bytes to `dst`, after HEADROOM.
fn packet(dst: Ipv4Addr) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + PACKET_LEN];
    let p = &mut buf[HEADROOM..];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(PACKET_LEN as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 63;
    p[9] = 6;
    p[12..16].copy_from_slice(&Ipv4Addr::new(10, 255, 0, 1).octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum::checksum(&p[..20]).to_be_bytes();
    p[10..12].copy_from_slice(&sum);
    buf
}

fn batch(seed: u32) -> Vec<Vec<u8>> {
    let mut s = seed;
    (0..BATCH)
        .map(|_| {
            let b = xorshift(&mut s) % ROUTES;
            packet(Ipv4Addr::from(block(b) + 1 + xorshift(&mut s) % 62))
        })
        .collect()
}

struct Open;

impl DecapPolicy for Open {
    fn source_allowed(&self, outer_src: Ipv4Addr) -> bool {
        outer_src == LOCAL
    }

    fn destination_local(&self, _inner_dst: Ipv4Addr) -> bool {
        true
    }
}

fn benches(c: &mut Criterion) {
    let settings = TunnelSettings::new(LOCAL);
    let mut ids = IdentGenerator::new(0x5eed);
    let mut group = c.benchmark_group("encap");
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut bufs = batch(1);
    group.bench_function("encap", |b| {
        b.iter(|| {
            for buf in bufs.iter_mut() {
                let r = encapsulate(buf, HEADROOM, node(7), 1480, &settings, &mut ids);
                black_box(&r);
            }
        })
    });

    let mut outers: Vec<Vec<u8>> = batch(2)
        .into_iter()
        .map(|mut buf| {
            encapsulate(&mut buf, HEADROOM, node(7), 1480, &settings, &mut ids).expect("encap");
            buf
        })
        .collect();
    group.bench_function("decap", |b| {
        b.iter(|| {
            for buf in outers.iter_mut() {
                let r = decapsulate(buf, &Open);
                black_box(&r);
            }
        })
    });

    let mut lpm: Lpm<Ipv4Addr> = Lpm::new();
    for i in 0..ROUTES {
        let net = Ipv4Network::new(Ipv4Addr::from(block(i)), 26).expect("valid prefix");
        lpm.insert(net, node(i));
    }
    let mut bufs = batch(3);
    let mut dsts = [Ipv4Addr::UNSPECIFIED; BATCH];
    let mut hops = [None; BATCH];
    group.bench_function("lookup_encap_10k", |b| {
        b.iter(|| {
            for (dst, buf) in dsts.iter_mut().zip(bufs.iter()) {
                *dst = inner_destination(&buf[HEADROOM..]).unwrap_or(Ipv4Addr::UNSPECIFIED);
            }
            lpm.lookup_batch(&dsts, &mut hops);
            for (buf, hop) in bufs.iter_mut().zip(hops.iter()) {
                if let Some(hop) = hop {
                    let r = encapsulate(buf, HEADROOM, *hop, 1480, &settings, &mut ids);
                    black_box(&r);
                }
            }
        })
    });
    group.finish();
}

criterion_group!(encap, benches);
criterion_main!(encap);
