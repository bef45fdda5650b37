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
//!
//! With the AF_XDP underlay a worker may also own AF_XDP sockets
//! ([`XdpPart`]): it receives the frames they take (copied out of the UMEM
//! into its RX buffers, then decap and the TUN write as above) and
//! transmits through the first one. Its TUN reads then go straight into
//! UMEM transmit chunks ([`UmemFrame`]), where encap writes the outer
//! header and the socket the Ethernet header: no copy on the way out. A
//! batch with a next hop whose MAC is not known yet leaves through the raw
//! socket from the same chunks.
//!
//! When its sources run dry a worker waits in one of three ways
//! ([`Pacing`]): it spins inside its busy-poll window (`busy_poll_us`);
//! under load it sleeps on a short timer and looks again (`poll_interval_us`,
//! interrupt mitigation as NAPI does it), until a quiet spell
//! (`poll_quiet_us`) without packets; otherwise it blocks in epoll. While
//! it sleeps on the timer it is on no wait queue, so the threads that
//! queue packets for it (the sender on the underlay, whose syscall runs
//! the receive path on veth; the pods writing to TUN) do not pay a
//! cross-CPU wakeup per flush.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};
use tunl_encap::{HEADROOM, OuterChecksum, TokenBucket, UnderlayError};
use tunl_io::xdp::{UmemFrame, Xsk};
use tunl_io::{Buffer, IcmpReceiver, IpipReceiver, IpipSender, PacketBuf, PacketSender, TunQueue};
use tunl_routing::RouteReader;

use super::WorkerOptions;
use super::counters::LocalCounters;
use super::nexthop::NextHop;
use super::pipeline::{
    EncapOutcome, EncapState, IcmpLimit, Pipeline, RX_BATCH, Sender, TX_BATCH, UnderlayVerdict,
    underlay_frame, underlay_icmp,
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
/// Packets one pass must handle (inner packets encapsulated plus
/// decapsulated, segments counted) to start the timer polling
/// (`poll_interval_us`): a lone packet (a ping, a request) keeps the worker
/// blocking as before, so small request/response exchanges pay no timer
/// (measured: with a threshold of 1, 2 ms pings took 4.5× as long, see
/// docs/performance.md); once it polls, any packet found keeps it polling.
pub const POLL_START_PACKETS: u64 = 8;
/// The timer slack of a worker that polls on a timer: the kernel's default
/// (50 µs) would stretch every sleep by that much.
const POLL_TIMER_SLACK_NS: std::ffi::c_ulong = 1_000;

const TUN: Token = Token(0);
const IPIP: Token = Token(1);
const ICMP: Token = Token(2);
const WAKE: Token = Token(3);
/// The first AF_XDP socket's token; the others follow.
const XSK_BASE: usize = 4;

/// The underlay receive side, owned by one worker.
pub struct RxPart {
    /// The raw IPIP socket.
    pub ipip: IpipReceiver,
    /// The raw ICMP socket for underlay errors.
    pub icmp: IcmpReceiver,
}

/// A worker's AF_XDP sockets (`[dataplane] underlay = "xdp"`).
pub struct XdpPart {
    /// The sockets of the RX queues given to this worker (at least one);
    /// it transmits through the first.
    pub sockets: Vec<Xsk>,
    /// The underlay device's MAC: the source of every frame sent.
    pub src_mac: [u8; 6],
}

/// The AF_XDP side of a worker's I/O.
struct WorkerXdp {
    sockets: Vec<Xsk>,
    /// UMEM chunks of `sockets[0]` lent as TUN read buffers.
    frames: Vec<UmemFrame>,
    src_mac: [u8; 6],
}

/// A worker's I/O: the poller, the descriptors it owns and the buffers it
/// reads into.
struct WorkerIo {
    poll: Poll,
    queue: TunQueue,
    /// The raw IP sender.
    sender: IpipSender,
    /// The AF_PACKET sender (`underlay = "packet"`, or `"xdp"` for a worker
    /// without AF_XDP sockets).
    packet_tx: Option<PacketSender>,
    xdp: Option<WorkerXdp>,
    rx: Option<RxPart>,
    tx_bufs: Vec<PacketBuf>,
    rx_bufs: Vec<PacketBuf>,
    icmp_buf: Vec<u8>,
    rx_errors: ErrorStreak,
    icmp_errors: ErrorStreak,
    /// Whether the last TUN write found the device down (logged once per
    /// stretch).
    tun_down: bool,
}

/// One dataplane thread's state: its I/O, its pipeline, its statistics, and
/// the shared state the pipeline reads.
pub struct Worker {
    id: usize,
    /// How the worker waits when its sources ran dry.
    pacing: Pacing,
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
    /// worker that receives from the underlay's raw sockets, `xdp` for each
    /// worker given AF_XDP sockets. Returns the worker and the waker that
    /// interrupts its poll (used to stop it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        queue: TunQueue,
        sender: IpipSender,
        packet_tx: Option<PacketSender>,
        xdp: Option<XdpPart>,
        rx: Option<RxPart>,
        routes: RouteReader<NextHop>,
        shared: Arc<Shared>,
        options: WorkerOptions,
        icmp_limit: Arc<Mutex<TokenBucket>>,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let WorkerOptions {
            tunnel_mtu,
            busy_poll,
            poll_interval,
            poll_quiet,
            ..
        } = options;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&queue);
        poll.registry()
            .register(&mut SourceFd(&fd), TUN, Interest::READABLE)?;
        if let Some(rx) = &rx {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&rx.ipip);
            poll.registry()
                .register(&mut SourceFd(&fd), IPIP, Interest::READABLE)?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&rx.icmp);
            poll.registry()
                .register(&mut SourceFd(&fd), ICMP, Interest::READABLE)?;
        }
        let xdp = match xdp {
            Some(XdpPart {
                mut sockets,
                src_mac,
            }) if !sockets.is_empty() => {
                for (i, socket) in sockets.iter().enumerate() {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
                    poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(XSK_BASE + i),
                        Interest::READABLE,
                    )?;
                }
                let frames = sockets[0].tx_frames(TX_BATCH);
                Some(WorkerXdp {
                    sockets,
                    frames,
                    src_mac,
                })
            }
            _ => None,
        };
        let rx_bufs = if rx.is_some() || xdp.is_some() {
            (0..RX_BATCH)
                .map(|_| PacketBuf::with_capacity(RX_BUF_LEN))
                .collect()
        } else {
            Vec::new()
        };
        // A worker that reads TUN into UMEM chunks needs no heap buffers.
        let tx_bufs = if xdp.is_some() { 0 } else { TX_BATCH };
        let tx_buf_len = HEADROOM + usize::from(tunnel_mtu).max(1500);
        let worker = Worker {
            id,
            pacing: Pacing::new(busy_poll, poll_interval, poll_quiet, Instant::now()),
            io: WorkerIo {
                poll,
                queue,
                sender,
                packet_tx,
                xdp,
                rx,
                tx_bufs: (0..tx_bufs)
                    .map(|_| PacketBuf::with_capacity(tx_buf_len))
                    .collect(),
                rx_bufs,
                icmp_buf: vec![0; 2048],
                rx_errors: ErrorStreak::default(),
                icmp_errors: ErrorStreak::default(),
                tun_down: false,
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
        if !self.pacing.interval.is_zero() {
            if let Err(e) = nix::sys::prctl::set_timerslack(POLL_TIMER_SLACK_NS) {
                debug!(worker = self.id, error = %e, "timer slack not set");
            }
        }
        let mut events = Events::with_capacity(16);
        let (mut tun_ready, mut ipip_ready, mut icmp_ready) = (true, self.io.rx.is_some(), false);
        let mut xsk_ready = self.io.xdp.is_some();
        // Whether the per-node counts were published since the last work.
        let mut flushed = false;
        loop {
            let busy = tun_ready || ipip_ready || icmp_ready || xsk_ready;
            let wait = if busy {
                None
            } else {
                if !flushed {
                    // First idle pass: publish the per-node counts.
                    self.stats.flush_nodes(&self.shared);
                    flushed = true;
                }
                Some(self.pacing.wait(Instant::now))
            };
            let local = &mut self.stats.counts.local;
            let timeout = match wait {
                None | Some(Wait::Timer) => Some(Duration::ZERO),
                Some(Wait::Spin) => {
                    // Busy polling: look again without sleeping, but let
                    // whatever else wants this core (the pods) run first.
                    std::thread::yield_now();
                    local.busy_polls += 1;
                    Some(Duration::ZERO)
                }
                Some(Wait::Block { left_timer }) => {
                    if left_timer {
                        // Published now: the worker may block for long,
                        // and the counters are otherwise flushed after the
                        // wakeup.
                        local.poll_blocks += 1;
                        self.stats.flush();
                    }
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
                    Token(t) if t >= XSK_BASE => xsk_ready = true,
                    _ => {}
                }
            }
            if tun_ready || ipip_ready || icmp_ready || xsk_ready {
                // The busy-poll window and the quiet spell run from the
                // last packet handled.
                self.pacing.worked(Instant::now());
                flushed = false;
            } else if wait == Some(Wait::Timer) && events.is_empty() {
                // Nothing yet: sleep, off every wait queue, then look
                // again with a zero timeout (the next pass).
                std::thread::sleep(self.pacing.interval);
                self.stats.counts.local.timer_polls += 1;
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if tun_ready {
                tun_ready = !self.encap_from_tun();
            }
            if xsk_ready {
                xsk_ready = !self.decap_from_xsk();
            }
            if ipip_ready {
                ipip_ready = !self.decap_from_underlay();
            }
            if icmp_ready {
                icmp_ready = !self.read_underlay_icmp();
            }
            let local = &self.stats.counts.local;
            self.pacing.handled(local.tx_packets + local.rx_packets);
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
        if self.io.xdp.is_some() {
            return self.encap_from_tun_xdp();
        }
        for _ in 0..BUDGET {
            let (filled, end) = read_tun(
                &mut self.io.queue,
                &mut self.io.tx_bufs,
                self.id,
                &mut self.stats,
                &self.shared,
            );
            if filled > 0 {
                let Worker {
                    id,
                    io,
                    pipeline,
                    stats,
                    routes,
                    shared,
                    ..
                } = self;
                let direct = io.packet_tx.as_ref().map(|_| Sender::Packet);
                let bufs = &mut io.tx_bufs[..filled];
                let out = plan(pipeline, bufs, direct, &mut io.queue, stats, routes, shared);
                let result = send_through_sockets(
                    out,
                    bufs,
                    &mut io.sender,
                    io.packet_tx.as_mut(),
                    &mut stats.counts.local,
                    shared,
                    *id,
                );
                match result {
                    SendResult::Sent => {}
                    SendResult::BufferFull => return false,
                    SendResult::Fatal => return true,
                }
            }
            if end != ReadEnd::More {
                return true;
            }
        }
        false
    }

    /// [`Worker::encap_from_tun`] for a worker with AF_XDP sockets: TUN is
    /// read into UMEM chunks, and a batch goes out through the first socket
    /// when every next hop's MAC is known, through the raw socket otherwise.
    fn encap_from_tun_xdp(&mut self) -> bool {
        for _ in 0..BUDGET {
            let Worker {
                id,
                io,
                pipeline,
                stats,
                routes,
                shared,
                ..
            } = self;
            let Some(xdp) = io.xdp.as_mut() else {
                return true;
            };
            // The chunks sent last time come back from the completion ring.
            let ready = xdp.sockets[0].refill(&mut xdp.frames);
            if ready < TX_READ_ROOM {
                // The chunks are still on their way out (nothing is lost:
                // the packets wait in TUN): come back later.
                return false;
            }
            let (filled, end) =
                read_tun(&mut io.queue, &mut xdp.frames[..ready], *id, stats, shared);
            if filled > 0 {
                let frames = &mut xdp.frames[..filled];
                let out = plan(
                    pipeline,
                    frames,
                    Some(Sender::Xdp),
                    &mut io.queue,
                    stats,
                    routes,
                    shared,
                );
                if out.sender() == Sender::Xdp {
                    let sends = out
                        .transmits()
                        .iter()
                        .zip(out.macs())
                        .map(|(t, mac)| (t.buf, t.start, *mac));
                    let report = xdp.sockets[0].transmit(frames, sends, xdp.src_mac);
                    let local = &mut stats.counts.local;
                    local.tx_packets += report.sent as u64;
                    local.tx_xdp += report.sent as u64;
                    local.tx_buffer_full += report.skipped as u64;
                    local.tx_retries += report.kick_retries as u64;
                } else {
                    let result = send_through_sockets(
                        out,
                        frames,
                        &mut io.sender,
                        None,
                        &mut stats.counts.local,
                        shared,
                        *id,
                    );
                    match result {
                        SendResult::Sent => {}
                        SendResult::BufferFull => return false,
                        SendResult::Fatal => return true,
                    }
                }
            }
            if end != ReadEnd::More {
                return true;
            }
        }
        false
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
            // The raw socket's packets passed the kernel's IP layer, which
            // verified their outer checksums.
            self.decap_batch(report.received, OuterChecksum::VerifiedByKernel);
        }
        false
    }

    /// Receives the frames the AF_XDP sockets took and writes them
    /// decapsulated to TUN: each frame's outer packet is copied out of the
    /// UMEM into an RX buffer at offset 0, as the raw socket would have
    /// received it (GRO then coalesces into those buffers). Returns true
    /// when every socket is drained.
    fn decap_from_xsk(&mut self) -> bool {
        for _ in 0..BUDGET {
            let mut got = 0;
            let sockets = self.io.xdp.as_ref().map_or(0, |x| x.sockets.len());
            for i in 0..sockets {
                let WorkerIo { xdp, rx_bufs, .. } = &mut self.io;
                let Some(xdp) = xdp.as_mut() else {
                    return true;
                };
                let local = &mut self.stats.counts.local;
                let mut filled = 0;
                let n = xdp.sockets[i].receive(RX_BATCH as u32, |frame| {
                    let Some(outer) = underlay_frame(frame) else {
                        local.drop(tunl_encap::DropReason::MalformedOuter);
                        return;
                    };
                    let buf = &mut rx_bufs[filled];
                    let Some(room) = buf.full_mut().get_mut(..outer.len()) else {
                        local.rx_truncated += 1;
                        return;
                    };
                    room.copy_from_slice(outer);
                    buf.set_len(outer.len());
                    filled += 1;
                });
                local.rx_xdp += u64::from(n);
                got += n;
                if filled > 0 {
                    // Nothing checked these frames before tunl: verify the
                    // outer header's checksum too.
                    self.decap_batch(filled, OuterChecksum::Verify);
                }
            }
            if got == 0 {
                return true;
            }
        }
        false
    }

    /// Hands `rx_bufs[..received]` to the pipeline and writes what it kept;
    /// `outer` says whether the kernel verified the outer checksums.
    fn decap_batch(&mut self, received: usize, outer: OuterChecksum) {
        let policy = self.stats.load_policy(&self.shared);
        let routes = self.routes.load();
        let kept = self
            .pipeline
            .decap(
                &mut self.io.rx_bufs[..received],
                &policy,
                &routes,
                outer,
                &mut self.stats.counts,
            )
            .deliver();
        drop(routes);
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
                local.rx_bytes += report.bytes as u64;
                local.rx_tun_full +=
                    (report.dropped - report.oversize_dropped - report.down) as u64;
                local.rx_tun_down += report.down as u64;
                local.rx_gso += report.gso_written as u64;
                local.rx_oversize += report.oversize_dropped as u64;
                let io = &mut self.io;
                if report.down > 0 && !io.tun_down {
                    warn!(
                        "TUN device is down (ip link set ... down?): packets from the underlay are dropped and counted in rx_tun_down until it is up again"
                    );
                    io.tun_down = true;
                } else if report.sent > 0 && io.tun_down {
                    info!("TUN device is up again: delivering packets from the underlay");
                    io.tun_down = false;
                }
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
                UnderlayVerdict::Refused { node, why } => {
                    debug!(%node, ?why, "underlay ICMP error refused")
                }
            }
        }
        false
    }
}

/// How a worker waits when its sources ran dry (see the module
/// documentation): the busy-poll window, the timer polling under load and
/// its quiet spell. Reads no clock: the worker passes `now`.
#[derive(Debug)]
struct Pacing {
    /// How long to keep polling without sleeping after the last packet.
    busy_poll: Duration,
    /// The timer's sleep under load; zero: never.
    interval: Duration,
    /// The quiet spell after which the timer polling ends.
    quiet: Duration,
    /// When the worker last found a source ready.
    last_work: Instant,
    /// Whether the worker polls on the timer (it handled a pass of at
    /// least [`POLL_START_PACKETS`] and has not blocked since).
    polling: bool,
}

/// How to wait, decided by [`Pacing::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Look again at once (inside the busy-poll window).
    Spin,
    /// Look without waiting; if nothing is there, sleep one interval.
    Timer,
    /// Block in epoll until a source is ready. `left_timer`: the worker
    /// was polling on the timer until now.
    Block {
        /// The timer polling ended with this wait.
        left_timer: bool,
    },
}

impl Pacing {
    /// The pacing of `[dataplane]`'s `busy_poll_us`, `poll_interval_us`
    /// and `poll_quiet_us`; a zero interval or quiet spell turns the timer
    /// polling off.
    fn new(busy_poll: Duration, interval: Duration, quiet: Duration, now: Instant) -> Pacing {
        Pacing {
            busy_poll,
            interval: if quiet.is_zero() {
                Duration::ZERO
            } else {
                interval
            },
            quiet,
            last_work: now,
            polling: false,
        }
    }

    /// A source was found ready at `now`.
    fn worked(&mut self, now: Instant) {
        self.last_work = now;
    }

    /// A pass handled `packets`: enough of them start the timer polling.
    fn handled(&mut self, packets: u64) {
        if packets >= POLL_START_PACKETS && !self.interval.is_zero() {
            self.polling = true;
        }
    }

    /// How to wait, every source being dry; `now` reads the clock, which
    /// only a worker that spins or polls on the timer needs.
    fn wait(&mut self, now: impl FnOnce() -> Instant) -> Wait {
        if self.busy_poll.is_zero() && !self.polling {
            return Wait::Block { left_timer: false };
        }
        let idle = now().saturating_duration_since(self.last_work);
        if idle < self.busy_poll {
            Wait::Spin
        } else if self.polling && idle < self.quiet {
            Wait::Timer
        } else {
            let left_timer = std::mem::replace(&mut self.polling, false);
            Wait::Block { left_timer }
        }
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

/// How a round of TUN reads ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The buffers are full: there may be more to read.
    More,
    /// The queue is drained.
    Drained,
    /// The device is broken; the daemon is stopping.
    Broken,
}

/// Reads pod packets into `bufs` while a whole read still fits
/// ([`TX_READ_ROOM`]); returns how many buffers were filled and why it
/// stopped.
fn read_tun<B: Buffer>(
    queue: &mut TunQueue,
    bufs: &mut [B],
    id: usize,
    stats: &mut Stats,
    shared: &Shared,
) -> (usize, ReadEnd) {
    let mut filled = 0;
    while bufs.len() - filled >= TX_READ_ROOM {
        match queue.recv_segments(&mut bufs[filled..]) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (filled, ReadEnd::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A malformed offload header from the kernel: count it and
                // go on; the queue itself is fine.
                debug!(worker = id, error = %e, "TUN read could not be split");
                stats.counts.local.tun_split_errors += 1;
                break;
            }
            Err(e) => {
                // The device is gone or broken (EBADFD, EIO): stop the
                // daemon rather than spin on it.
                shared.fail(format!("TUN read failed: {e}"));
                return (filled, ReadEnd::Broken);
            }
        }
    }
    (filled, ReadEnd::More)
}

/// Hands a batch of pod packets to the pipeline and writes its ICMP answers
/// into TUN; returns the outcome, whose transmits the caller sends.
/// `direct` is the worker's link-layer sender, if it has one (the batch
/// takes it when every next hop's MAC is known).
fn plan<'p, B: AsRef<[u8]> + AsMut<[u8]>>(
    pipeline: &'p mut Pipeline,
    bufs: &mut [B],
    direct: Option<Sender>,
    queue: &mut TunQueue,
    stats: &mut Stats,
    routes: &RouteReader<NextHop>,
    shared: &Shared,
) -> &'p EncapOutcome {
    let policy = stats.load_policy(shared);
    let routes = routes.load();
    let neighbours = direct.map(|_| shared.neighbours.load());
    let state = EncapState {
        policy: &policy,
        routes: &routes,
        pmtu: &shared.pmtu,
        neighbours: neighbours.as_deref().map(|n| n.as_slice()),
        direct: direct.unwrap_or(Sender::Raw),
        now: Instant::now(),
        local_present: shared.links.local_present(),
    };
    let out = pipeline.encap(bufs, &state, &mut stats.counts);
    drop(routes);
    stats.batch_done(shared);
    if out.neighbour_miss() {
        shared.neighbours.report_miss();
    }
    let local = &mut stats.counts.local;
    for answer in out.icmp().iter() {
        match queue.send_one(answer.packet()) {
            Ok(()) => local.icmp_sent += 1,
            Err(e) => debug!(error = %e, "ICMP write to TUN failed"),
        }
    }
    out
}

/// Sends an outcome's transmits through the raw socket, or the AF_PACKET
/// socket when the pipeline chose it.
fn send_through_sockets<B: AsRef<[u8]>>(
    out: &EncapOutcome,
    bufs: &[B],
    sender: &mut IpipSender,
    packet_tx: Option<&mut PacketSender>,
    local: &mut LocalCounters,
    shared: &Shared,
    id: usize,
) -> SendResult {
    let n = out.transmits().len();
    if n == 0 {
        return SendResult::Sent;
    }
    let mut packets: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
    for (p, t) in packets.iter_mut().zip(out.transmits()) {
        *p = bufs[t.buf].as_ref().get(t.start..).unwrap_or_default();
    }
    let (result, via_packet_socket) = match (out.sender(), packet_tx) {
        (Sender::Packet, Some(ptx)) => (ptx.send_batch(&packets[..n], out.macs()), true),
        _ => (sender.send_batch(&packets[..n], out.nodes()), false),
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
                debug!(worker = id, error = %e, failed = report.failed, "underlay send errors");
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
            debug!(worker = id, error = %e, "underlay send failed");
            SendResult::Sent
        }
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

    const US: Duration = Duration::from_micros(1);

    fn pacing(busy: u64, interval: u64, quiet: u64, t0: Instant) -> Pacing {
        Pacing::new(
            US * busy as u32,
            US * interval as u32,
            US * quiet as u32,
            t0,
        )
    }

    #[test]
    fn blocks_until_a_pass_under_load() {
        let t0 = Instant::now();
        let mut p = pacing(0, 50, 1000, t0);
        // Idle from the start: block, and no timer polling to leave.
        assert_eq!(p.wait(|| t0), Wait::Block { left_timer: false });
        // A lone packet (a ping) does not start the timer.
        p.worked(t0);
        p.handled(1);
        assert_eq!(p.wait(|| t0 + US), Wait::Block { left_timer: false });
        p.worked(t0);
        p.handled(POLL_START_PACKETS - 1);
        assert_eq!(p.wait(|| t0 + US), Wait::Block { left_timer: false });
        // A pass of POLL_START_PACKETS does.
        p.worked(t0);
        p.handled(POLL_START_PACKETS);
        assert_eq!(p.wait(|| t0 + US), Wait::Timer);
        assert_eq!(p.wait(|| t0 + US * 999), Wait::Timer);
    }

    #[test]
    fn any_packet_extends_the_quiet_spell_then_it_blocks_once() {
        let t0 = Instant::now();
        let mut p = pacing(0, 50, 1000, t0);
        p.worked(t0);
        p.handled(POLL_START_PACKETS);
        // A single packet found while polling restarts the spell.
        let t1 = t0 + US * 900;
        p.worked(t1);
        p.handled(1);
        assert_eq!(p.wait(|| t0 + US * 1500), Wait::Timer);
        assert_eq!(p.wait(|| t1 + US * 999), Wait::Timer);
        // The spell is over: block, saying the timer polling ended ...
        assert_eq!(p.wait(|| t1 + US * 1000), Wait::Block { left_timer: true });
        // ... once: the next block is a plain one, and a lone packet
        // after it does not start the timer again.
        assert_eq!(p.wait(|| t1 + US * 1001), Wait::Block { left_timer: false });
        let t2 = t1 + US * 5000;
        p.worked(t2);
        p.handled(1);
        assert_eq!(p.wait(|| t2 + US), Wait::Block { left_timer: false });
    }

    #[test]
    fn zero_turns_the_timer_off() {
        let t0 = Instant::now();
        for (interval, quiet) in [(0, 1000), (50, 0), (0, 0)] {
            let mut p = pacing(0, interval, quiet, t0);
            assert!(p.interval.is_zero());
            p.worked(t0);
            p.handled(1000);
            assert_eq!(p.wait(|| t0 + US), Wait::Block { left_timer: false });
        }
    }

    #[test]
    fn busy_poll_window_comes_first() {
        let t0 = Instant::now();
        let mut p = pacing(200, 50, 1000, t0);
        p.worked(t0);
        p.handled(POLL_START_PACKETS);
        assert_eq!(p.wait(|| t0 + US * 199), Wait::Spin);
        assert_eq!(p.wait(|| t0 + US * 200), Wait::Timer);
        assert_eq!(p.wait(|| t0 + US * 1000), Wait::Block { left_timer: true });
        // Busy polling alone (no timer) spins, then blocks.
        let mut p = pacing(200, 0, 0, t0);
        p.worked(t0);
        p.handled(POLL_START_PACKETS);
        assert_eq!(p.wait(|| t0 + US * 100), Wait::Spin);
        assert_eq!(p.wait(|| t0 + US * 200), Wait::Block { left_timer: false });
    }
}
