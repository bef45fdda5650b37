//! The dataplane: worker threads wiring TUN and the underlay sockets to
//! encap and decap.
//!
//! ```text
//!  TUN queue i ──read/TSO split──▶ worker i ──pipeline: LPM + encap──▶ sendmmsg ──▶ node
//!  TUN queue 0 ◀──GRO write────── worker 0 ◀──pipeline: decap──────── recvmmsg ◀── node
//! ```
//!
//! Each worker ([`worker`]) owns one queue of a multi-queue TUN device and
//! handles pod packets from it. Worker 0 also owns the single raw IPIP
//! receive socket (several would each get a copy of every packet) and the
//! underlay ICMP socket. The workers do the I/O; what to do with each
//! packet is decided by the [`pipeline`], which does none. The control
//! plane's side of the shared [`state`] includes [`maintain_path_mtu`], a
//! task the daemon runs beside the workers.

pub mod counters;
pub mod links;
pub mod nexthop;
pub mod nodes;
pub mod pipeline;
pub mod pmtu;
pub mod state;
pub mod stats;
pub mod worker;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;
use tunl_encap::TokenBucket;
use tunl_io::xdp::Xsk;
use tunl_io::{IcmpReceiver, IpipReceiver, IpipSender, PacketSender, TunQueue};
use tunl_routing::RouteReader;

pub use counters::{CounterSnapshot, Counters};
pub use links::{DeviceState, LinkStates, UnderlayReport};
pub use nexthop::{MultipathGroup, NextHop};
pub use nodes::{NodeCounters, NodeTraffic, RefusedSnapshot};
pub use pipeline::Pipeline;
pub use pmtu::PathMtu;
pub use state::{Neighbour, NeighbourTable, Policy, Shared};
pub use stats::Stats;
pub use worker::{RxPart, Worker, XdpPart};

/// Running dataplane threads.
pub struct Dataplane {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<()>, Arc<Waker>)>,
}

/// What the dataplane needs to start.
pub struct DataplaneIo {
    /// One TUN queue per worker.
    pub queues: Vec<TunQueue>,
    /// The raw IPIP receive socket.
    pub ipip: IpipReceiver,
    /// The raw ICMP socket.
    pub icmp: IcmpReceiver,
    /// Send buffer size for each worker's underlay socket.
    pub socket_buffer: usize,
    /// The index of the underlay device to send outer packets on with
    /// AF_PACKET (`[dataplane] underlay = "packet"`, and the workers
    /// without an AF_XDP socket under `"xdp"`), or `None` for the raw IP
    /// socket only. The next hops' MACs come from [`Shared::neighbours`].
    pub packet_tx: Option<u32>,
    /// The AF_XDP sockets (`underlay = "xdp"`).
    pub xdp: Option<DataplaneXdp>,
}

/// The AF_XDP sockets for the workers, one per RX queue.
pub struct DataplaneXdp {
    /// The sockets in queue order: socket `i` goes to worker `i % workers`,
    /// so workers beyond the queues get none and transmit through
    /// AF_PACKET.
    pub sockets: Vec<Xsk>,
    /// The underlay device's MAC.
    pub src_mac: [u8; 6],
}

/// How the workers run.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// The tunnel MTU (sizes the transmit buffers).
    pub tunnel_mtu: u16,
    /// ICMP errors per second for the whole dataplane (one token bucket,
    /// burst up to 10, shared by the workers).
    pub icmp_rate: u32,
    /// How long a worker keeps polling without sleeping after its last
    /// packet (`[dataplane] busy_poll_us`); zero sleeps at once.
    pub busy_poll: Duration,
    /// Under load, how long a worker whose sources ran dry sleeps before
    /// it looks again, instead of blocking in epoll (`[dataplane]
    /// poll_interval_us`); zero blocks at once.
    pub poll_interval: Duration,
    /// How long a worker keeps sleeping on `poll_interval` without finding
    /// a packet before it blocks in epoll again (`[dataplane]
    /// poll_quiet_us`).
    pub poll_quiet: Duration,
}

/// Applies the path MTUs the workers learned and prunes expired ones
/// ([`PathMtu::maintain`]) every [`pmtu::MAINTAIN_INTERVAL`], forever:
/// spawn it on the daemon's runtime while the dataplane runs (the interval
/// explains why a timer and not a wakeup).
pub async fn maintain_path_mtu(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(pmtu::MAINTAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.pmtu.maintain(Instant::now());
    }
}

impl Dataplane {
    /// Starts one worker thread per TUN queue.
    pub fn start(
        io_parts: DataplaneIo,
        routes: &RouteReader<NextHop>,
        shared: Arc<Shared>,
        options: WorkerOptions,
    ) -> io::Result<Dataplane> {
        // One bucket for every worker: the limit holds for the daemon as a
        // whole. A worker the bucket refused stays off it for a token's
        // time, so a flood of bad packets does not contend on its lock.
        let rate = options.icmp_rate.max(1);
        let icmp_limit = Arc::new(Mutex::new(TokenBucket::new(rate, rate.min(10))));
        let mut rx = Some(RxPart {
            ipip: io_parts.ipip,
            icmp: io_parts.icmp,
        });
        let mut dataplane = Dataplane {
            shared: shared.clone(),
            workers: Vec::new(),
        };
        let workers = io_parts.queues.len().max(1);
        let mut xdp_parts: Vec<Option<XdpPart>> = (0..workers).map(|_| None).collect();
        if let Some(xdp) = io_parts.xdp {
            for (i, socket) in xdp.sockets.into_iter().enumerate() {
                xdp_parts[i % workers]
                    .get_or_insert_with(|| XdpPart {
                        sockets: Vec::new(),
                        src_mac: xdp.src_mac,
                    })
                    .sockets
                    .push(socket);
            }
        }
        for ((id, queue), xdp) in io_parts.queues.into_iter().enumerate().zip(xdp_parts) {
            let sender = IpipSender::open(io_parts.socket_buffer).map_err(io::Error::other)?;
            // A worker with an AF_XDP socket transmits through it instead.
            let packet_tx = io_parts
                .packet_tx
                .filter(|_| xdp.is_none())
                .map(|ifindex| PacketSender::open(ifindex, io_parts.socket_buffer))
                .transpose()
                .map_err(io::Error::other)?;
            let (worker, waker) = Worker::new(
                id,
                queue,
                sender,
                packet_tx,
                xdp,
                rx.take(),
                routes.clone(),
                shared.clone(),
                options,
                icmp_limit.clone(),
            )?;
            let handle = std::thread::Builder::new()
                .name(format!("tunl-dp{id}"))
                .spawn(move || {
                    // Workers only use open descriptors: no capability needed.
                    crate::daemon::privileges::drop_thread_capabilities();
                    worker.run()
                })?;
            dataplane.workers.push((handle, waker));
        }
        Ok(dataplane)
    }

    /// The shared state (routes, policy, counters).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops and joins every worker.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for (_, waker) in &self.workers {
            let _ = waker.wake();
        }
        for (handle, _) in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
