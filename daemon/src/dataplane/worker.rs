//! A dataplane worker: one thread, one TUN queue, both directions.
//!
//! Every worker reads its TUN queue (pod packets: route lookup, in-place
//! encap, `sendmmsg` to the underlay). The worker that owns the raw IPIP
//! socket also receives from the underlay (`recvmmsg`, decap, GRO-coalesced
//! write to its TUN queue) and reads underlay ICMP errors. Work per wakeup is
//! bounded so one direction cannot starve the other.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};
use tunl_encap::{
    DropReason, EncapError, HEADROOM, IdentGenerator, TokenBucket, UnderlayError, Unreachable,
    decapsulate, encapsulate, frag_needed, inner_destination, parse_underlay_error, unreachable,
};
use tunl_io::{IcmpReceiver, IpipReceiver, IpipSender, PacketBuf, PacketSender, TunQueue};
use tunl_routing::RouteReader;

use super::WorkerOptions;
use super::counters::{Counters, LocalCounters};
use super::nodes::LocalNodeCounters;
use super::state::{Policy, Shared, resolve_macs};

/// Segments handled per encap batch (and the size of the TX buffer ring).
pub const TX_BATCH: usize = 256;
/// Room that must be left in the TX ring before another TUN read: the most
/// segments one read can split into. The daemon caps the TUN device's
/// `gso_max_segs` at this, so the kernel segments bigger TSO bursts (a
/// 64 KiB burst at an MSS under 512) itself before tunl reads them.
pub const TX_READ_ROOM: usize = 128;
/// Outer packets received per `recvmmsg`.
pub const RX_BATCH: usize = 32;
/// Capacity of an RX buffer: a whole underlay GRO super-packet, received at
/// offset 0; after decap the TUN write may coalesce up to 64 KiB into it at
/// offset `HEADROOM`.
const RX_BUF_LEN: usize = tunl_io::RX_BUF_CAPACITY;
/// Batches between flushes of the per-node counters.
const NODE_FLUSH_BATCHES: u32 = 64;
/// The lowest underlay path MTU tunl accepts from ICMP (Linux's
/// `net.ipv4.route.min_pmtu` default).
const MIN_PATH_MTU: u16 = 552;
/// Batches per source per wakeup before the worker looks at other sources.
const BUDGET: usize = 16;

const TUN: Token = Token(0);
const IPIP: Token = Token(1);
const ICMP: Token = Token(2);
const WAKE: Token = Token(3);

/// The underlay receive side, owned by one worker.
pub struct RxPart {
    /// The raw IPIP socket.
    pub ipip: IpipReceiver,
    /// The raw ICMP socket for underlay errors.
    pub icmp: IcmpReceiver,
}

/// One dataplane thread's state.
pub struct Worker {
    id: usize,
    queue: TunQueue,
    sender: IpipSender,
    rx: Option<RxPart>,
    routes: RouteReader<Ipv4Addr>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    local: LocalCounters,
    nodes: LocalNodeCounters,
    /// The policy `nodes` is counting against (its `vias` index the tallies).
    nodes_policy: Option<Arc<Policy>>,
    /// Batches since `nodes` was last flushed.
    node_batches: u32,
    ids: IdentGenerator,
    /// The daemon's ICMP rate limit, shared by every worker.
    icmp_limit: IcmpLimit,
    tx_bufs: Vec<PacketBuf>,
    tx_out: Vec<(usize, usize, Ipv4Addr)>,
    rx_bufs: Vec<PacketBuf>,
    icmp_buf: Vec<u8>,
    poll: Poll,
    /// How long to keep polling without sleeping after the last packet.
    busy_poll: Duration,
    /// The AF_PACKET sender (`[dataplane] packet_tx`).
    packet_tx: Option<PacketSender>,
    rx_errors: ErrorStreak,
    icmp_errors: ErrorStreak,
}

/// A worker's handle on the daemon-wide ICMP token bucket. Once the bucket
/// refuses, the worker refuses on its own for the time one token takes to
/// come back, without taking the lock: under a flood of packets that each
/// deserve an answer, the workers do not contend on the bucket per packet.
/// It never allows more than the bucket does.
#[derive(Debug)]
struct IcmpLimit {
    bucket: Arc<Mutex<TokenBucket>>,
    quiet_until: Option<Instant>,
}

impl IcmpLimit {
    fn new(bucket: Arc<Mutex<TokenBucket>>) -> IcmpLimit {
        IcmpLimit {
            bucket,
            quiet_until: None,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if self.quiet_until.is_some_and(|until| now < until) {
            return false;
        }
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let allowed = bucket.allow(now);
        self.quiet_until = (!allowed).then(|| now + bucket.token_interval());
        allowed
    }
}

/// Receive errors in a row on one socket (a socket found drained ends the
/// streak too).
#[derive(Debug, Default)]
struct ErrorStreak(u32);

/// Receive errors in a row after which the socket counts as broken.
const MAX_ERROR_STREAK: u32 = 1000;

impl ErrorStreak {
    /// Records a receive error: logs the first of a streak, and after
    /// [`MAX_ERROR_STREAK`] in a row stops the daemon. Returns whether to
    /// try again.
    fn record(&mut self, what: &str, e: &io::Error, shared: &Shared) -> bool {
        self.0 += 1;
        if self.0 == 1 {
            warn!(error = %e, "{what} failed; retrying");
        }
        if self.0 >= MAX_ERROR_STREAK {
            shared.fail(format!("{what} failed {} times in a row: {e}", self.0));
            return false;
        }
        true
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

impl Worker {
    /// A worker over its TUN queue and underlay sender; `rx` for the one
    /// worker that receives from the underlay. Returns the worker and the
    /// waker that interrupts its poll (used to stop it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        queue: TunQueue,
        sender: IpipSender,
        packet_tx: Option<PacketSender>,
        rx: Option<RxPart>,
        routes: RouteReader<Ipv4Addr>,
        shared: Arc<Shared>,
        options: WorkerOptions,
        icmp_limit: Arc<Mutex<TokenBucket>>,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let WorkerOptions {
            tunnel_mtu,
            busy_poll,
            ..
        } = options;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&queue);
        poll.registry()
            .register(&mut SourceFd(&fd), TUN, Interest::READABLE)?;
        let rx_bufs = if let Some(rx) = &rx {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&rx.ipip);
            poll.registry()
                .register(&mut SourceFd(&fd), IPIP, Interest::READABLE)?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&rx.icmp);
            poll.registry()
                .register(&mut SourceFd(&fd), ICMP, Interest::READABLE)?;
            (0..RX_BATCH)
                .map(|_| PacketBuf::with_capacity(RX_BUF_LEN))
                .collect()
        } else {
            Vec::new()
        };
        let tx_buf_len = HEADROOM + usize::from(tunnel_mtu).max(1500);
        let counters = shared.register_counters();
        let worker = Worker {
            id,
            queue,
            sender,
            rx,
            routes,
            counters,
            local: LocalCounters::default(),
            nodes: LocalNodeCounters::default(),
            nodes_policy: None,
            node_batches: 0,
            ids: IdentGenerator::new(seed(id)),
            icmp_limit: IcmpLimit::new(icmp_limit),
            tx_bufs: (0..TX_BATCH)
                .map(|_| PacketBuf::with_capacity(tx_buf_len))
                .collect(),
            tx_out: Vec::with_capacity(TX_BATCH),
            rx_bufs,
            icmp_buf: vec![0; 2048],
            poll,
            busy_poll,
            packet_tx,
            rx_errors: ErrorStreak::default(),
            icmp_errors: ErrorStreak::default(),
            shared,
        };
        Ok((worker, waker))
    }

    /// Runs until [`Shared::stop`] is set and the waker fires.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let (mut tun_ready, mut ipip_ready, mut icmp_ready) = (true, self.rx.is_some(), false);
        let mut last_work = Instant::now();
        // Whether the per-node counts were published since the last work.
        let mut flushed = false;
        loop {
            let busy = tun_ready || ipip_ready || icmp_ready;
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                if !flushed {
                    // First idle pass: publish the per-node counts.
                    self.flush_nodes();
                    flushed = true;
                }
                if !self.busy_poll.is_zero() && last_work.elapsed() < self.busy_poll {
                    // Busy polling: look again without sleeping, but let
                    // whatever else wants this core (the pods) run first.
                    std::thread::yield_now();
                    Some(Duration::ZERO)
                } else {
                    None
                }
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.shared
                        .fail(format!("worker {}: poll failed: {e}", self.id));
                    break;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    TUN => tun_ready = true,
                    IPIP => ipip_ready = true,
                    ICMP => icmp_ready = true,
                    _ => {}
                }
            }
            if tun_ready || ipip_ready || icmp_ready {
                // The busy-poll window runs from the last packet handled.
                last_work = Instant::now();
                flushed = false;
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if tun_ready {
                tun_ready = !self.encap_from_tun();
            }
            if ipip_ready {
                ipip_ready = !self.decap_from_underlay();
            }
            if icmp_ready {
                icmp_ready = !self.read_underlay_icmp();
            }
            self.counters.flush(&mut self.local);
        }
        self.counters.flush(&mut self.local);
        self.flush_nodes();
        debug!(worker = self.id, "worker stopped");
    }

    /// Reads pod packets and sends them encapsulated. Returns true when the
    /// queue is drained.
    fn encap_from_tun(&mut self) -> bool {
        for _ in 0..BUDGET {
            let mut filled = 0;
            let mut drained = false;
            while TX_BATCH - filled >= TX_READ_ROOM {
                match self.queue.recv_segments(&mut self.tx_bufs[filled..]) {
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        // A malformed offload header from the kernel: count
                        // it and go on; the queue itself is fine.
                        debug!(worker = self.id, error = %e, "TUN read failed");
                        self.local.drop(DropReason::MalformedInner);
                        break;
                    }
                    Err(e) => {
                        // The device is gone or broken (EBADFD, EIO): stop
                        // the daemon rather than spin on it.
                        self.shared.fail(format!("TUN read failed: {e}"));
                        return true;
                    }
                }
            }
            if filled > 0 {
                self.encap_batch(filled);
            }
            if drained {
                return true;
            }
        }
        false
    }

    fn encap_batch(&mut self, filled: usize) {
        let policy = load_policy(&self.shared, &mut self.nodes, &mut self.nodes_policy);
        let settings = &policy.settings;
        let routes = self.routes.load();
        self.tx_out.clear();
        for i in 0..filled {
            let buf = &mut self.tx_bufs[i];
            let inner_len = buf.len().saturating_sub(HEADROOM);
            let Some(dst) = inner_destination(&buf.as_ref()[HEADROOM..]) else {
                self.local.drop(DropReason::MalformedInner);
                continue;
            };
            let Some(next_hop) = routes.lookup(dst) else {
                self.local.drop(DropReason::NoRoute);
                answer_icmp(
                    &mut self.icmp_limit,
                    &mut self.queue,
                    &mut self.local,
                    &mut self.icmp_buf,
                    |out| unreachable(&buf.as_ref()[HEADROOM..], Unreachable::Net, dst, out),
                );
                continue;
            };
            let mtu = self
                .shared
                .pmtu
                .effective(next_hop, inner_len, settings.mtu);
            match encapsulate(
                buf.as_mut(),
                HEADROOM,
                next_hop,
                mtu,
                settings,
                &mut self.ids,
            ) {
                Ok(outer) => {
                    self.tx_out.push((i, outer.start, next_hop));
                    self.nodes.tx(&policy.vias, next_hop, inner_len);
                    self.local.tx_bytes += inner_len as u64;
                }
                Err(EncapError::TooBig { mtu }) => {
                    self.local.drop(DropReason::TooBig);
                    let inner = &self.tx_bufs[i].as_ref()[HEADROOM..];
                    answer_icmp(
                        &mut self.icmp_limit,
                        &mut self.queue,
                        &mut self.local,
                        &mut self.icmp_buf,
                        |out| frag_needed(inner, mtu, dst, out),
                    );
                }
                Err(e) => self.local.drop(e.reason()),
            }
        }
        drop(routes);
        self.node_batch_done();
        if self.tx_out.is_empty() {
            return;
        }
        let mut packets: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
        let mut dsts = [Ipv4Addr::UNSPECIFIED; TX_BATCH];
        let n = self.tx_out.len();
        for (k, (i, start, nh)) in self.tx_out.iter().enumerate() {
            packets[k] = &self.tx_bufs[*i].as_ref()[*start..];
            dsts[k] = *nh;
        }
        // AF_PACKET when every next hop's MAC is known; otherwise the batch
        // goes through the IP stack, which resolves them (ARP).
        let mut macs = [[0u8; 6]; TX_BATCH];
        let packet_tx = self.packet_tx.as_mut().filter(|_| {
            let neighbours = &self.shared.neighbours;
            let known = resolve_macs(&neighbours.load(), &dsts[..n], &mut macs[..n]).is_some();
            if !known {
                neighbours.report_miss();
            }
            known
        });
        let via_packet_socket = packet_tx.is_some();
        let result = match packet_tx {
            Some(ptx) => ptx.send_batch(&packets[..n], &macs[..n]),
            None => self.sender.send_batch(&packets[..n], &dsts[..n]),
        };
        match result {
            Ok(report) => {
                self.local.tx_packets += report.sent as u64;
                if via_packet_socket {
                    self.local.tx_af_packet += report.sent as u64;
                }
                self.local.tx_errors += report.failed as u64;
                self.local.tx_retries += report.nobufs_retries as u64;
                if let Some(e) = report.last_error {
                    debug!(worker = self.id, error = %e, failed = report.failed, "underlay send errors");
                }
            }
            Err(e) => {
                self.local.tx_errors += n as u64;
                debug!(worker = self.id, error = %e, "underlay send failed");
            }
        }
    }

    /// Receives outer packets and writes them decapsulated to TUN. Returns
    /// true when the socket is drained.
    fn decap_from_underlay(&mut self) -> bool {
        for _ in 0..BUDGET {
            let Some(rx) = self.rx.as_mut() else {
                return true;
            };
            let report = match rx.ipip.recv_batch(&mut self.rx_bufs) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.rx_errors.clear();
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Edge-triggered: returning "drained" would leave
                    // queued packets unread until the next one arrives.
                    if !self.rx_errors.record("underlay receive", &e, &self.shared) {
                        return true;
                    }
                    continue;
                }
            };
            self.rx_errors.clear();
            self.local.rx_truncated += report.truncated as u64;
            self.decap_batch(report.received);
        }
        false
    }

    fn decap_batch(&mut self, received: usize) {
        let policy = load_policy(&self.shared, &mut self.nodes, &mut self.nodes_policy);
        let mut kept = 0;
        for i in 0..received {
            let buf = &mut self.rx_bufs[i];
            if buf.is_empty() {
                continue; // truncated, already counted
            }
            match decapsulate(buf.as_mut(), &**policy) {
                Ok(d) => {
                    let len = d.inner.len();
                    if d.inner.start != HEADROOM {
                        // Outer options: move the inner packet to the common
                        // offset the batched TUN write needs.
                        buf.as_mut().copy_within(d.inner.clone(), HEADROOM);
                    }
                    buf.set_len(HEADROOM + len);
                    self.local.rx_bytes += len as u64;
                    self.nodes.rx(&policy.vias, d.outer_src, len);
                    self.rx_bufs.swap(i, kept);
                    kept += 1;
                }
                Err(reason) => {
                    if reason == DropReason::UnknownSource {
                        self.nodes.refused_packet(buf.as_ref());
                    }
                    self.local.drop(reason);
                }
            }
        }
        self.node_batch_done();
        if kept == 0 {
            return;
        }
        match self.queue.send_batch(&mut self.rx_bufs[..kept], HEADROOM) {
            Ok(report) => {
                self.local.rx_packets += report.sent as u64;
                self.local.rx_tun_full += (report.dropped - report.oversize_dropped) as u64;
                self.local.rx_gso += report.gso_written as u64;
                self.local.rx_oversize += report.oversize_dropped as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                self.local.rx_tun_full += kept as u64;
            }
            Err(e) => {
                self.local.rx_tun_full += kept as u64;
                self.shared.fail(format!("TUN write failed: {e}"));
            }
        }
    }

    /// Counts a batch for the per-node flush: the counts go to the shared
    /// table every [`NODE_FLUSH_BATCHES`] batches (and when the worker goes
    /// idle), not per batch, so small-packet batches do not each take its
    /// lock and read the clock.
    fn node_batch_done(&mut self) {
        self.node_batches += 1;
        if self.node_batches >= NODE_FLUSH_BATCHES {
            self.flush_nodes();
        }
    }

    fn flush_nodes(&mut self) {
        self.node_batches = 0;
        if let Some(policy) = &self.nodes_policy {
            self.nodes.flush(&policy.vias, &self.shared.nodes);
        }
    }

    /// Reads underlay ICMP errors about our outer packets. Returns true when
    /// drained.
    fn read_underlay_icmp(&mut self) -> bool {
        for _ in 0..BUDGET {
            let Some(rx) = self.rx.as_mut() else {
                return true;
            };
            let n = match rx.icmp.recv(&mut self.icmp_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.icmp_errors.clear();
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !self
                        .icmp_errors
                        .record("underlay ICMP receive", &e, &self.shared)
                    {
                        return true;
                    }
                    continue;
                }
            };
            self.icmp_errors.clear();
            let Some(msg) = parse_underlay_error(&self.icmp_buf[..n]) else {
                continue;
            };
            let policy = self.shared.policy.load();
            // Only about packets we sent, toward a node we route to.
            if msg.outer_src != policy.settings.local
                || policy.vias.binary_search(&msg.node).is_err()
            {
                continue;
            }
            self.local.underlay_icmp += 1;
            match msg.error {
                UnderlayError::FragNeeded { mtu } => {
                    // Like the kernel's min_pmtu: a (possibly spoofed) tiny
                    // MTU must not cripple every flow toward the node.
                    let tunnel_mtu = mtu.max(MIN_PATH_MTU) - 20;
                    // Only a reduction below the tunnel MTU means anything.
                    if tunnel_mtu < policy.settings.mtu
                        && self.shared.pmtu.learn(msg.node, tunnel_mtu)
                    {
                        self.local.pmtu_updates += 1;
                        debug!(node = %msg.node, tunnel_mtu, "path MTU lowered");
                    }
                }
                UnderlayError::Redirect => {}
                other => debug!(node = %msg.node, error = ?other, "underlay ICMP error"),
            }
        }
        false
    }
}

/// Loads the policy for one batch and makes `nodes` count against it: when
/// the policy changed since the last batch, the counts made against the old
/// one (whose `vias` index them) are flushed first.
fn load_policy(
    shared: &Shared,
    nodes: &mut LocalNodeCounters,
    current: &mut Option<Arc<Policy>>,
) -> arc_swap::Guard<Arc<Policy>> {
    let policy = shared.policy.load();
    match current {
        Some(p) if Arc::ptr_eq(p, &policy) => {}
        Some(p) => {
            nodes.flush(&p.vias, &shared.nodes);
            *current = Some(Arc::clone(&policy));
        }
        None => *current = Some(Arc::clone(&policy)),
    }
    policy
}

/// Answers a dropped pod packet with an ICMP error, rate-limited, written
/// into the TUN device toward the inner source. `build` writes the error
/// into its buffer and returns its length. The error's source is the inner
/// destination: ICMP written into TUN arrives at the node as if from the
/// tunnel, so its source must not be a local address (martian) and must
/// route back into the tunnel (strict rp_filter), which the inner
/// destination does.
fn answer_icmp(
    limit: &mut IcmpLimit,
    queue: &mut TunQueue,
    local: &mut LocalCounters,
    out: &mut [u8],
    build: impl FnOnce(&mut [u8]) -> Option<usize>,
) {
    if !limit.allow(Instant::now()) {
        local.icmp_rate_limited += 1;
        return;
    }
    let Some(len) = build(out) else { return };
    match queue.send_one(&out[..len]) {
        Ok(()) => local.icmp_sent += 1,
        Err(e) => debug!(error = %e, "ICMP write to TUN failed"),
    }
}

fn seed(id: usize) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ (std::process::id() << 8) ^ (id as u32).wrapping_mul(0x9E37_79B9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_limit_never_allows_more_than_the_shared_bucket() {
        let bucket = Arc::new(Mutex::new(TokenBucket::new(100, 10)));
        let mut workers = [IcmpLimit::new(bucket.clone()), IcmpLimit::new(bucket)];
        let start = Instant::now();
        let mut allowed = 0;
        // Two workers asking every 50 µs for one second.
        for step in 0..20_000u32 {
            let now = start + Duration::from_micros(50) * step;
            if workers[(step % 2) as usize].allow(now) {
                allowed += 1;
            }
        }
        // The burst of 10, then 100 per second.
        assert!((100..=111).contains(&allowed), "{allowed}");
    }

    #[test]
    fn icmp_limit_stays_off_the_lock_for_a_token_after_a_refusal() {
        // 100 per second: one token every 10 ms.
        let bucket = Arc::new(Mutex::new(TokenBucket::new(100, 1)));
        let mut limit = IcmpLimit::new(bucket.clone());
        let t0 = Instant::now();
        assert!(limit.allow(t0));
        assert!(!limit.allow(t0));
        // Refilled behind the worker's back: a refusal at 5 ms comes from
        // the worker alone, which did not ask the bucket.
        *bucket.lock().unwrap() = TokenBucket::new(100, 1);
        assert!(!limit.allow(t0 + Duration::from_millis(5)));
        assert!(bucket.lock().unwrap().allow(t0 + Duration::from_millis(5)));
        assert!(limit.allow(t0 + Duration::from_millis(20)));
    }
}
