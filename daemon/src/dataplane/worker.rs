//! A dataplane worker: one thread, one TUN queue, both directions.
//!
//! The worker does the I/O and only the I/O: it waits with mio, reads a
//! batch (TUN, or `recvmmsg` on the raw IPIP socket), hands it to the
//! [`Pipeline`] and performs the outcome (`sendmmsg` on the socket the
//! pipeline chose, the batched TUN write, the ICMP answers). Work per
//! wakeup is bounded so one direction cannot starve the other.
//!
//! Every worker reads its TUN queue (pod packets: route lookup, in-place
//! encap, `sendmmsg` to the underlay). The worker that owns the raw IPIP
//! socket also receives from the underlay (`recvmmsg`, decap, GRO-coalesced
//! write to its TUN queue) and reads underlay ICMP errors.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};
use tunl_encap::{HEADROOM, TokenBucket, UnderlayError};
use tunl_io::{IcmpReceiver, IpipReceiver, IpipSender, PacketBuf, PacketSender, TunQueue};
use tunl_routing::RouteReader;

use super::WorkerOptions;
use super::nexthop::NextHop;
use super::pipeline::{
    EncapState, IcmpLimit, Pipeline, RX_BATCH, Sender, TX_BATCH, UnderlayVerdict, underlay_icmp,
};
use super::state::Shared;
use super::stats::Stats;

/// Room that must be left in the TX ring before another TUN read: the most
/// segments one read can split into. The daemon caps the TUN device's
/// `gso_max_segs` at this, so the kernel segments bigger TSO bursts (a
/// 64 KiB burst at an MSS under 512) itself before tunl reads them.
pub const TX_READ_ROOM: usize = 128;
/// Capacity of an RX buffer: a whole underlay GRO super-packet, received at
/// offset 0; after decap the TUN write may coalesce up to 64 KiB into it at
/// offset `HEADROOM`.
const RX_BUF_LEN: usize = tunl_io::RX_BUF_CAPACITY;
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

/// A worker's I/O: the poller, the descriptors it owns and the buffers it
/// reads into.
struct WorkerIo {
    poll: Poll,
    queue: TunQueue,
    /// The raw IP sender.
    sender: IpipSender,
    /// The AF_PACKET sender (`[dataplane] packet_tx`).
    packet_tx: Option<PacketSender>,
    rx: Option<RxPart>,
    tx_bufs: Vec<PacketBuf>,
    rx_bufs: Vec<PacketBuf>,
    icmp_buf: Vec<u8>,
    rx_errors: ErrorStreak,
    icmp_errors: ErrorStreak,
}

/// One dataplane thread's state: its I/O, its pipeline, its statistics, and
/// the shared state the pipeline reads.
pub struct Worker {
    id: usize,
    /// How long to keep polling without sleeping after the last packet.
    busy_poll: Duration,
    io: WorkerIo,
    pipeline: Pipeline,
    stats: Stats,
    routes: RouteReader<NextHop>,
    shared: Arc<Shared>,
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

/// Send errors after which the socket is unusable (what `sendmmsg` returns
/// instead of counting): the daemon stops, as it does when the TUN device
/// fails.
fn is_fatal_send_error(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        matches!(
            Errno::from_raw(n),
            Errno::EBADF | Errno::ENOTSOCK | Errno::EFAULT
        )
    })
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
        routes: RouteReader<NextHop>,
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
        let worker = Worker {
            id,
            busy_poll,
            io: WorkerIo {
                poll,
                queue,
                sender,
                packet_tx,
                rx,
                tx_bufs: (0..TX_BATCH)
                    .map(|_| PacketBuf::with_capacity(tx_buf_len))
                    .collect(),
                rx_bufs,
                icmp_buf: vec![0; 2048],
                rx_errors: ErrorStreak::default(),
                icmp_errors: ErrorStreak::default(),
            },
            pipeline: Pipeline::new(seed(id), IcmpLimit::new(icmp_limit)),
            stats: Stats::new(shared.register_counters()),
            routes,
            shared,
        };
        Ok((worker, waker))
    }

    /// Runs until [`Shared::stop`] is set and the waker fires.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let (mut tun_ready, mut ipip_ready, mut icmp_ready) = (true, self.io.rx.is_some(), false);
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
                    self.stats.flush_nodes(&self.shared);
                    flushed = true;
                }
                if !self.busy_poll.is_zero() && last_work.elapsed() < self.busy_poll {
                    // Busy polling: look again without sleeping, but let
                    // whatever else wants this core (the pods) run first.
                    std::thread::yield_now();
                    self.stats.counts.local.busy_polls += 1;
                    Some(Duration::ZERO)
                } else {
                    None
                }
            };
            if let Err(e) = self.io.poll.poll(&mut events, timeout) {
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
            self.stats.flush();
        }
        self.stats.flush();
        self.stats.flush_nodes(&self.shared);
        debug!(worker = self.id, "worker stopped");
    }

    /// Reads pod packets and sends them encapsulated. Returns true when the
    /// queue is drained (or broken), false when the budget ran out or the
    /// send buffer stayed full: the worker turns to its other sources and
    /// comes back.
    fn encap_from_tun(&mut self) -> bool {
        for _ in 0..BUDGET {
            let mut filled = 0;
            let mut drained = false;
            while TX_BATCH - filled >= TX_READ_ROOM {
                match self.io.queue.recv_segments(&mut self.io.tx_bufs[filled..]) {
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        // A malformed offload header from the kernel: count
                        // it and go on; the queue itself is fine.
                        debug!(worker = self.id, error = %e, "TUN read could not be split");
                        self.stats.counts.local.tun_split_errors += 1;
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
                match self.encap_batch(filled) {
                    SendResult::Sent => {}
                    SendResult::BufferFull => return false,
                    SendResult::Fatal => return true,
                }
            }
            if drained {
                return true;
            }
        }
        false
    }

    /// Hands `tx_bufs[..filled]` to the pipeline and performs its outcome.
    fn encap_batch(&mut self, filled: usize) -> SendResult {
        let Worker {
            id,
            io,
            pipeline,
            stats,
            routes,
            shared,
            ..
        } = self;
        let policy = stats.load_policy(shared);
        let routes = routes.load();
        let neighbours = io.packet_tx.as_ref().map(|_| shared.neighbours.load());
        let state = EncapState {
            policy: &policy,
            routes: &routes,
            pmtu: &shared.pmtu,
            neighbours: neighbours.as_deref().map(|n| n.as_slice()),
            now: Instant::now(),
        };
        let out = pipeline.encap(&mut io.tx_bufs[..filled], &state, &mut stats.counts);
        drop(routes);
        stats.batch_done(shared);
        if out.neighbour_miss() {
            shared.neighbours.report_miss();
        }
        let local = &mut stats.counts.local;
        for answer in out.icmp().iter() {
            match io.queue.send_one(answer.packet()) {
                Ok(()) => local.icmp_sent += 1,
                Err(e) => debug!(error = %e, "ICMP write to TUN failed"),
            }
        }
        let n = out.transmits().len();
        if n == 0 {
            return SendResult::Sent;
        }
        let mut packets: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
        for (p, t) in packets.iter_mut().zip(out.transmits()) {
            *p = &io.tx_bufs[t.buf].as_ref()[t.start..];
        }
        let (result, via_packet_socket) = match (out.sender(), io.packet_tx.as_mut()) {
            (Sender::Packet, Some(ptx)) => (ptx.send_batch(&packets[..n], out.macs()), true),
            _ => (io.sender.send_batch(&packets[..n], out.nodes()), false),
        };
        match result {
            Ok(report) => {
                local.tx_packets += report.sent as u64;
                if via_packet_socket {
                    local.tx_af_packet += report.sent as u64;
                }
                local.tx_errors += report.failed as u64;
                local.tx_retries += report.nobufs_retries as u64;
                local.tx_buffer_full += report.buffer_full as u64;
                if let Some(e) = report.last_error {
                    debug!(worker = *id, error = %e, failed = report.failed, "underlay send errors");
                }
                if report.buffer_full > 0 {
                    SendResult::BufferFull
                } else {
                    SendResult::Sent
                }
            }
            Err(e) if is_fatal_send_error(&e) => {
                local.tx_errors += n as u64;
                shared.fail(format!("underlay send failed: {e}"));
                SendResult::Fatal
            }
            Err(e) => {
                local.tx_errors += n as u64;
                debug!(worker = *id, error = %e, "underlay send failed");
                SendResult::Sent
            }
        }
    }

    /// Receives outer packets and writes them decapsulated to TUN. Returns
    /// true when the socket is drained.
    fn decap_from_underlay(&mut self) -> bool {
        for _ in 0..BUDGET {
            let Some(rx) = self.io.rx.as_mut() else {
                return true;
            };
            let report = match rx.ipip.recv_batch(&mut self.io.rx_bufs) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.rx_errors.clear();
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Edge-triggered: returning "drained" would leave
                    // queued packets unread until the next one arrives.
                    if !self
                        .io
                        .rx_errors
                        .record("underlay receive", &e, &self.shared)
                    {
                        return true;
                    }
                    continue;
                }
            };
            self.io.rx_errors.clear();
            self.stats.counts.local.rx_truncated += report.truncated as u64;
            self.decap_batch(report.received);
        }
        false
    }

    /// Hands `rx_bufs[..received]` to the pipeline and writes what it kept.
    fn decap_batch(&mut self, received: usize) {
        let policy = self.stats.load_policy(&self.shared);
        let kept = self
            .pipeline
            .decap(
                &mut self.io.rx_bufs[..received],
                &policy,
                &mut self.stats.counts,
            )
            .deliver();
        drop(policy);
        self.stats.batch_done(&self.shared);
        if kept == 0 {
            return;
        }
        let local = &mut self.stats.counts.local;
        match self
            .io
            .queue
            .send_batch(&mut self.io.rx_bufs[..kept], HEADROOM)
        {
            Ok(report) => {
                local.rx_packets += report.sent as u64;
                local.rx_tun_full += (report.dropped - report.oversize_dropped) as u64;
                local.rx_gso += report.gso_written as u64;
                local.rx_oversize += report.oversize_dropped as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                local.rx_tun_full += kept as u64;
            }
            Err(e) => {
                local.rx_tun_full += kept as u64;
                self.shared.fail(format!("TUN write failed: {e}"));
            }
        }
    }

    /// Reads underlay ICMP errors about our outer packets. Returns true when
    /// drained.
    fn read_underlay_icmp(&mut self) -> bool {
        for _ in 0..BUDGET {
            let Some(rx) = self.io.rx.as_mut() else {
                return true;
            };
            let n = match rx.icmp.recv(&mut self.io.icmp_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.icmp_errors.clear();
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !self
                        .io
                        .icmp_errors
                        .record("underlay ICMP receive", &e, &self.shared)
                    {
                        return true;
                    }
                    continue;
                }
            };
            self.io.icmp_errors.clear();
            let policy = self.shared.policy.load();
            let verdict = underlay_icmp(
                &self.io.icmp_buf[..n],
                &policy,
                &self.shared.pmtu,
                Instant::now(),
                &mut self.stats.counts.local,
            );
            match verdict {
                UnderlayVerdict::LowerMtu { node, mtu } => {
                    // The control plane applies it (PathMtu::maintain).
                    if !self.shared.pmtu.offer(node, mtu) {
                        debug!(%node, tunnel_mtu = mtu, "path MTU intake full; offer lost");
                    }
                }
                UnderlayVerdict::Noted {
                    error: UnderlayError::Redirect,
                    ..
                }
                | UnderlayVerdict::Ignored => {}
                UnderlayVerdict::Noted { node, error } => {
                    debug!(%node, ?error, "underlay ICMP error")
                }
            }
        }
        false
    }
}

/// How an encap batch's send went, for the TUN budget.
enum SendResult {
    /// Sent (some packets may have failed and been counted).
    Sent,
    /// The send buffer stayed full: leave the TUN queue for now.
    BufferFull,
    /// The socket is unusable; the daemon is stopping.
    Fatal,
}

fn seed(id: usize) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ (std::process::id() << 8) ^ (id as u32).wrapping_mul(0x9E37_79B9)
}
