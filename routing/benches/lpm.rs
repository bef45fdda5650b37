//! Lookup speed of tunl's LPM table against `prefix-trie` and `ip_network_table`,
//! its memory per route, and how fast an update reaches a reader.
//!
//! Tables: `n` random distinct /26 blocks plus ~1% other lengths, from a /8
//! pool (a /4 pool at 1M, since a /8 only holds 262,144 /26 blocks). Lookups:
//! 4096 random addresses inside random routes of the table.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ip_network_table::IpNetworkTable;
use ipnet::Ipv4Net;
use prefix_trie::PrefixMap;
use tunl_routing::{Ipv4Network, Lpm, RouteWriter};

const LOOKUPS: usize = 4096;
const SIZES: [(&str, usize); 4] = [
    ("1k", 1_000),
    ("10k", 10_000),
    ("100k", 100_000),
    ("1M", 1_000_000),
];
const OTHER_LENS: [u8; 8] = [16, 20, 22, 24, 27, 28, 30, 32];

/// splitmix64: a fixed-seed generator, so every run builds the same tables.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Workload {
    routes: Vec<(u32, u8, Ipv4Addr)>,
    lookups: Vec<Ipv4Addr>,
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn workload(n: usize, seed: u64) -> Workload {
    let mut rng = Rng(seed);
    let (pool, pool_len) = if n <= 200_000 {
        (10u32 << 24, 8u8)
    } else {
        (16u32 << 24, 4u8)
    };
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut routes = Vec::with_capacity(n);
    while routes.len() < n {
        let len = if rng.below(100) == 0 {
            OTHER_LENS[rng.below(OTHER_LENS.len() as u64) as usize]
        } else {
            26
        };
        let net = (pool | (rng.next() as u32 & !mask(pool_len))) & mask(len);
        if seen.insert((net, len)) {
            let hop = Ipv4Addr::from((172 << 24) | (16 << 16) | (rng.below(65_536) as u32));
            routes.push((net, len, hop));
        }
    }
    let lookups = (0..LOOKUPS)
        .map(|_| {
            let (net, len, _) = routes[rng.below(n as u64) as usize];
            Ipv4Addr::from(net | (rng.next() as u32 & !mask(len)))
        })
        .collect();
    Workload { routes, lookups }
}

fn build_tunl(w: &Workload) -> Lpm<Ipv4Addr> {
    let mut lpm = Lpm::new();
    for &(net, len, hop) in &w.routes {
        let p = Ipv4Network::new(Ipv4Addr::from(net), len).expect("len <= 32");
        lpm.insert(p, hop);
    }
    lpm
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lpm");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(LOOKUPS as u64));
    for (label, n) in SIZES {
        let w = workload(n, 0x7475_6e6c ^ n as u64);

        let lpm = build_tunl(&w);
        eprintln!(
            "MEMORY tunl n={label}: {:.1} bytes/route in one copy ({} bytes, {} routes); the concurrent table keeps 2 copies",
            lpm.memory_bytes() as f64 / lpm.len() as f64,
            lpm.memory_bytes(),
            lpm.len()
        );
        group.bench_with_input(BenchmarkId::new("tunl", label), &w.lookups, |b, addrs| {
            b.iter(|| {
                let mut hits = 0usize;
                for &a in addrs {
                    hits += usize::from(black_box(lpm.lookup(a)).is_some());
                }
                hits
            })
        });
        let mut out = vec![None; LOOKUPS];
        group.bench_with_input(
            BenchmarkId::new("tunl-batch", label),
            &w.lookups,
            |b, addrs| {
                b.iter(|| {
                    lpm.lookup_batch(addrs, &mut out);
                    black_box(&out);
                })
            },
        );
        // Through the concurrent table: one snapshot load per batch of 64 packets.
        let writer = RouteWriter::from_lpm(lpm);
        let reader = writer.reader();
        group.bench_with_input(
            BenchmarkId::new("tunl-reader", label),
            &w.lookups,
            |b, addrs| {
                b.iter(|| {
                    let mut hits = 0usize;
                    for batch in addrs.chunks(64) {
                        let table = reader.load();
                        for &a in batch {
                            hits += usize::from(black_box(table.lookup(a)).is_some());
                        }
                    }
                    hits
                })
            },
        );
        drop((writer, reader));

        let mut trie: PrefixMap<Ipv4Net, Ipv4Addr> = PrefixMap::new();
        for &(net, len, hop) in &w.routes {
            trie.insert(
                Ipv4Net::new(Ipv4Addr::from(net), len).expect("len <= 32"),
                hop,
            );
        }
        group.bench_with_input(
            BenchmarkId::new("prefix-trie", label),
            &w.lookups,
            |b, addrs| {
                b.iter(|| {
                    let mut hits = 0usize;
                    for &a in addrs {
                        let host = Ipv4Net::new(a, 32).expect("/32");
                        hits += usize::from(black_box(trie.get_lpm(&host)).is_some());
                    }
                    hits
                })
            },
        );
        drop(trie);

        let mut table: IpNetworkTable<Ipv4Addr> = IpNetworkTable::new();
        for &(net, len, hop) in &w.routes {
            let p = ip_network::Ipv4Network::new(Ipv4Addr::from(net), len).expect("network");
            table.insert(p, hop);
        }
        group.bench_with_input(
            BenchmarkId::new("ip_network_table", label),
            &w.lookups,
            |b, addrs| {
                b.iter(|| {
                    let mut hits = 0usize;
                    for &a in addrs {
                        hits += usize::from(black_box(table.longest_match_ipv4(a)).is_some());
                    }
                    hits
                })
            },
        );
    }
    group.finish();
}

/// Writer-side cost of one insert (apply to both copies + publish) at 100k
/// routes, and the time from `insert()` start until a reader spinning on
/// another thread sees the new value.
fn updates(c: &mut Criterion) {
    let w = workload(100_000, 0x7570);
    let mut writer = RouteWriter::from_lpm(build_tunl(&w));
    let reader = writer.reader();
    let probe: Ipv4Network = "10.255.255.192/26".parse().expect("prefix");
    let probe_addr = Ipv4Addr::new(10, 255, 255, 200);

    let mut group = c.benchmark_group("lpm_update");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    // Read side: entering and leaving one snapshot (once per batch of packets).
    group.bench_function("load/tunl/100k", |b| {
        b.iter(|| black_box(reader.load().len()))
    });
    let mut i = 0u32;
    group.bench_function("tunl/100k", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            writer.insert(probe, Ipv4Addr::from(i))
        })
    });
    group.finish();

    // Visibility latency: value k is published at t0; the reader stamps when it sees k.
    const UPDATES: u32 = 1000;
    let origin = Instant::now();
    let seen_at = Arc::new(AtomicU64::new(0));
    let seen_k = Arc::new(AtomicU64::new(0));
    let spinner = {
        let (seen_at, seen_k) = (Arc::clone(&seen_at), Arc::clone(&seen_k));
        thread::spawn(move || {
            let base = 1u32 << 31;
            let mut want = 1u32;
            while want <= UPDATES {
                let table = reader.load();
                if table.lookup(probe_addr) == Some(Ipv4Addr::from(base + want)) {
                    seen_at.store(origin.elapsed().as_nanos() as u64, Ordering::Release);
                    seen_k.store(u64::from(want), Ordering::Release);
                    want += 1;
                }
            }
        })
    };
    let mut visible = Vec::with_capacity(UPDATES as usize);
    let mut returned = Vec::with_capacity(UPDATES as usize);
    for k in 1..=UPDATES {
        let t0 = origin.elapsed().as_nanos() as u64;
        writer.insert(probe, Ipv4Addr::from((1u32 << 31) + k));
        returned.push(origin.elapsed().as_nanos() as u64 - t0);
        while seen_k.load(Ordering::Acquire) < u64::from(k) {
            std::hint::spin_loop();
        }
        visible.push(seen_at.load(Ordering::Acquire).saturating_sub(t0));
    }
    spinner.join().expect("spinner");
    visible.sort_unstable();
    returned.sort_unstable();
    let pct = |v: &[u64], p: usize| v[(v.len() - 1) * p / 100];
    eprintln!(
        "UPDATE tunl n=100k: insert() start -> reader on another thread sees it: median {} ns, p90 {} ns, p99 {} ns, max {} ns ({} updates)",
        pct(&visible, 50),
        pct(&visible, 90),
        pct(&visible, 99),
        pct(&visible, 100),
        UPDATES
    );
    eprintln!(
        "UPDATE tunl n=100k: insert() call duration (with a spinning reader): median {} ns, p99 {} ns",
        pct(&returned, 50),
        pct(&returned, 99)
    );
}

criterion_group!(benches, lookups, updates);
criterion_main!(benches);
