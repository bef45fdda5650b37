//! The TUN device: creation, multi-queue, TSO split on read, GRO on write.

use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};
use tunl_encap::{MIN_MTU, gso_packet_bytes, gso_segments, oversize_writes_as_is, tcp4_gso_header};

use crate::{Buffer, HEADROOM, IoError, MAX_IP_PACKET, PacketBuf, link};

/// How to create the TUN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes), e.g. `tunl0`.
    pub name: String,
    /// Interface MTU.
    pub mtu: u16,
    /// Address and prefix length to assign, if any.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// Enable `IFF_VNET_HDR` with TSO/CSUM (and USO where the kernel has it).
    pub offload: bool,
    /// Number of queues (one per worker thread); more than 1 makes the device
    /// multi-queue.
    pub queues: usize,
    /// Transmit queue length (the kernel default for TUN is 500).
    pub tx_queue_len: u32,
    /// Make the device persistent (`TUNSETPERSIST`): it outlives the
    /// process, with its routes, until someone deletes it. A device of that
    /// name that already exists (persistent, held by no one) is attached to
    /// instead of created when `attach` is set.
    pub persist: bool,
    /// Attach to an existing device of that name instead of creating it
    /// exclusively. Only for a caller that checked that no process holds
    /// the device (a persistent one left by an earlier run, without
    /// carrier) and that keeps other instances away while it attaches (tunl
    /// takes a per-device lock): a multi-queue device takes the queues of
    /// every process that asks for one by name. Without a device of that
    /// name, one is created (not exclusively).
    pub attach: bool,
}

/// A created, configured and up TUN device, before it is split into queues.
pub struct Tun {
    queues: Vec<SyncDevice>,
    name: String,
    mtu: u16,
    offload: bool,
    udp_gso: bool,
}

impl Tun {
    /// Creates the TUN device (multi-queue when `queues > 1`; `IFF_VNET_HDR`
    /// plus TSO/CSUM offloads when `offload`), sets the MTU, the address and
    /// the tx queue length, and brings it up. Every queue is non-blocking.
    ///
    /// The device lives in the network namespace of the calling thread.
    /// Unless `persist`, it disappears when the last queue is closed.
    /// Creation is exclusive: a device of that name that exists already
    /// (another process's, even one created at the same instant) is an
    /// error, never shared, unless `attach`: then the queues are attached to
    /// the existing (persistent) device, and the kernel refuses when its
    /// flags differ (multi-queue or not) or, for a single-queue device, when
    /// another process holds it.
    pub fn create(cfg: &TunConfig) -> Result<Tun, IoError> {
        if cfg.name.is_empty() || cfg.name.len() >= libc::IFNAMSIZ {
            return Err(IoError::InvalidConfig(format!(
                "device name {:?} must be 1 to {} bytes",
                cfg.name,
                libc::IFNAMSIZ - 1
            )));
        }
        if cfg.queues == 0 {
            return Err(IoError::InvalidConfig("queues must be at least 1".into()));
        }
        if cfg.mtu < MIN_MTU {
            return Err(IoError::InvalidConfig(format!(
                "MTU {} is below the IPv4 minimum of {MIN_MTU}",
                cfg.mtu
            )));
        }
        if let Some((_, prefix)) = cfg.ipv4
            && prefix > 32
        {
            return Err(IoError::InvalidConfig(format!(
                "prefix length {prefix} is above 32"
            )));
        }
        let name = cfg.name.as_str();
        // A multi-queue device takes the queues of every process that asks
        // for one by name: created first, exclusively, the device is ours
        // (a single-queue device refuses a second process by itself).
        let guard = (cfg.queues > 1 && !cfg.attach)
            .then(|| create_exclusive(name, cfg.offload))
            .transpose()
            .map_err(|e| IoError::from_os(format!("create TUN device {name}"), Some(name), e))?;
        let first = DeviceBuilder::new()
            .name(name)
            .offload(cfg.offload)
            .multi_queue(cfg.queues > 1)
            .inherit_enable_state()
            .build_sync()
            .map_err(|e| IoError::from_os(format!("create TUN device {name}"), Some(name), e))?;
        let ctx = |what: &str| {
            let what = format!("{what} on TUN device {name}");
            move |e| IoError::from_os(what, None, e)
        };
        first.set_mtu(cfg.mtu).map_err(ctx("set MTU"))?;
        first
            .set_tx_queue_len(cfg.tx_queue_len)
            .map_err(ctx("set tx queue length"))?;
        if let Some((addr, prefix)) = cfg.ipv4 {
            link::set_ipv4_address(name, addr, prefix).map_err(ctx("set IPv4 address"))?;
        }
        if cfg.persist {
            first.persist().map_err(ctx("make persistent"))?;
        }
        let offload = first.tcp_gso();
        let udp_gso = first.udp_gso();
        let mut queues = Vec::with_capacity(cfg.queues);
        queues.push(first);
        for _ in 1..cfg.queues {
            let q = queues[0]
                .try_clone()
                .map_err(|e| IoError::from_os(format!("attach queue to {name}"), Some(name), e))?;
            queues.push(q);
        }
        // Our queues hold the device now.
        drop(guard);
        for q in &queues {
            q.set_nonblocking(true).map_err(ctx("set non-blocking"))?;
        }
        queues[0].enabled(true).map_err(ctx("bring up"))?;
        tracing::debug!(
            name,
            queues = cfg.queues,
            offload,
            udp_gso,
            "TUN device created"
        );
        Ok(Tun {
            queues,
            name: cfg.name.clone(),
            mtu: cfg.mtu,
            offload,
            udp_gso,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `IFF_VNET_HDR` offloads (TSO split on read, GRO on write) are on.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Whether the kernel also accepted UDP segmentation offload (USO,
    /// Linux >= 6.2), so UDP GSO super-packets arrive and UDP GRO is used.
    pub fn udp_gso(&self) -> bool {
        self.udp_gso
    }

    /// The interface MTU as the kernel reports it.
    pub fn mtu(&self) -> io::Result<u16> {
        self.queues[0].mtu()
    }

    /// The transmit queue length as the kernel reports it.
    pub fn tx_queue_len(&self) -> io::Result<u32> {
        self.queues[0].tx_queue_len()
    }

    /// The interface index.
    pub fn if_index(&self) -> io::Result<u32> {
        self.queues[0].if_index()
    }

    /// Splits the device into its queues, one per worker thread.
    pub fn into_queues(self) -> Vec<TunQueue> {
        let offload = self.offload;
        let udp_gso = self.udp_gso;
        let mtu = self.mtu;
        self.queues
            .into_iter()
            .map(|dev| TunQueue::new(dev, offload, udp_gso, mtu))
            .collect()
    }
}

/// Creates the multi-queue TUN device `name` with the flags tun-rs will
/// attach its queues with, failing with `EBUSY` when a device of that name
/// exists (`IFF_TUN_EXCL`: the kernel checks and creates under one lock,
/// so of two processes racing, one fails). The returned descriptor's queue
/// is detached at once (`IFF_DETACH_QUEUE`): it holds the device without
/// receiving any of its packets, until the real queues are attached and it
/// is closed.
fn create_exclusive(name: &str, offload: bool) -> io::Result<std::fs::File> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = link::ifreq(name)?;
    let vnet = if offload { libc::IFF_VNET_HDR } else { 0 };
    let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_TUN_EXCL | vnet;
    // The flags fit a c_short (all below 0x10000).
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    tun_ioctl(&tun, libc::TUNSETIFF, &mut req)?;
    let mut req = link::ifreq(name)?;
    req.ifr_ifru.ifru_flags = libc::IFF_DETACH_QUEUE as libc::c_short;
    tun_ioctl(&tun, libc::TUNSETQUEUE, &mut req)?;
    Ok(tun)
}

/// One ioctl on a `/dev/net/tun` descriptor that takes an `ifreq`.
fn tun_ioctl(tun: &std::fs::File, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: TUNSETIFF and TUNSETQUEUE read (and TUNSETIFF writes back the
    // name into) one ifreq; req points to a valid, exclusively borrowed
    // ifreq, and the descriptor is open for the call's duration.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), request, req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What [`TunQueue::send_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Packets handed to the kernel (each coalesced segment counts).
    pub sent: usize,
    /// Bytes of the packets handed to the kernel, counted as they were
    /// given (the packets tun-rs GRO coalesced each count their own; a
    /// super-packet written as a GSO frame counts its own length once).
    pub bytes: usize,
    /// Packets dropped: write errors (queue full, device down, ...) or
    /// empty buffers.
    pub dropped: usize,
    /// Packets dropped because the device is down (`ip link set DEV down`:
    /// the write fails with `EIO`), also counted in `dropped`. An
    /// administrative state, not a failure: writes go through again once
    /// the device is up.
    pub down: usize,
    /// Super-packets (longer than the device MTU, e.g. from underlay GRO)
    /// written as one GSO frame: each also counts its segments in `sent`.
    pub gso_written: usize,
    /// Packets longer than the MTU that could be written neither as GSO
    /// frames (TCP, with offload on) nor as they are
    /// ([`oversize_writes_as_is`]: not TCP, one whole datagram): dropped,
    /// and also counted in `dropped`. A UDP packet reassembled from outer
    /// fragments is written as it is, and the node's stack fragments it or
    /// answers frag-needed.
    pub oversize_dropped: usize,
}

/// One queue of the TUN device, for one thread: reads with TSO split, writes
/// with GRO. Non-blocking; register its fd with the caller's poller.
pub struct TunQueue {
    dev: SyncDevice,
    offload: bool,
    udp_gso: bool,
    /// The device MTU: a packet longer than this is a super-packet.
    mtu: u16,
    /// Scratch for one read: virtio-net header plus a 64 KiB super-packet.
    rx: Box<[u8]>,
    /// Segment sizes from the split, grown once to the largest batch seen.
    sizes: Vec<usize>,
    gro: GROTable,
}

/// Marks the virtio-net header slot of a buffer whose packet tun-rs GRO
/// merged into another one: GRO writes a real header (gso_type 0, 1, 4, 5,
/// maybe | 0x80) into every buffer it will write, and none other.
const GRO_UNWRITTEN: u8 = 0xff;

/// Errors after which the fd is unusable: returned instead of counted.
/// (`EIO` is not one: a write to a device that is down fails with it, and
/// succeeds again once it is up.)
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EBADFD | libc::ENODEV)
    )
}

impl TunQueue {
    fn new(dev: SyncDevice, offload: bool, udp_gso: bool, mtu: u16) -> Self {
        Self {
            dev,
            offload,
            udp_gso,
            mtu,
            rx: vec![0; VIRTIO_NET_HDR_LEN + MAX_IP_PACKET].into_boxed_slice(),
            sizes: vec![0; tun_rs::IDEAL_BATCH_SIZE],
            gro: GROTable::new(),
        }
    }

    /// Whether this queue uses virtio-net headers (offload on).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// One `read()`: a single packet, or a TSO/USO super-packet split into
    /// MTU-sized segments. Segment `i` is written to `bufs[i]` starting at
    /// byte [`HEADROOM`], and `bufs[i].set_len(HEADROOM + segment_len)`.
    /// Returns the number of segments (`0..=bufs.len()`); the lengths of the
    /// other buffers are unspecified.
    ///
    /// Buffers need `HEADROOM + MTU` bytes of capacity; a super-packet needs
    /// as many buffers as it has segments (64 is enough for a 64 KiB packet
    /// at an MSS of 1024 or more; a 64 KiB burst at the smallest MSS Linux
    /// allows has over a thousand). Cap the device's `gso_max_segs` at the
    /// number of buffers offered
    /// ([`Netlink::set_gso_max_segs`](crate::netlink::Netlink::set_gso_max_segs))
    /// and the kernel segments longer bursts before they reach the queue.
    ///
    /// Errors: `WouldBlock` when nothing is queued; `InvalidData` when the
    /// packet read could not be split (malformed virtio-net header, too few
    /// or too small buffers): that packet is lost, the queue stays usable.
    /// Other errors are the OS error of `read()`.
    pub fn recv_segments<B: Buffer>(&mut self, bufs: &mut [B]) -> io::Result<usize> {
        if bufs.is_empty() {
            return Ok(0);
        }
        if !self.offload {
            let buf = &mut bufs[0];
            let Some(dst) = buf.full_mut().get_mut(HEADROOM..) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "buffer smaller than HEADROOM",
                ));
            };
            let n = self.dev.recv(dst)?;
            buf.set_len(HEADROOM + n);
            return Ok(1);
        }
        let n = bufs.len().min(u16::MAX as usize);
        let bufs = &mut bufs[..n];
        if self.sizes.len() < n {
            self.sizes.resize(n, 0);
        }
        for b in bufs.iter_mut() {
            b.set_len(b.capacity());
        }
        let res = self
            .dev
            .recv_multiple(&mut self.rx, bufs, &mut self.sizes[..n], HEADROOM);
        match res {
            Ok(count) => {
                for (b, &size) in bufs.iter_mut().zip(&self.sizes[..count]) {
                    b.set_len(HEADROOM + size);
                }
                Ok(count)
            }
            Err(e) => {
                for b in bufs.iter_mut() {
                    b.set_len(0);
                }
                if e.raw_os_error().is_some() {
                    Err(e)
                } else {
                    Err(io::Error::new(io::ErrorKind::InvalidData, e))
                }
            }
        }
    }

    /// Writes packets: each `bufs[i]` holds one IPv4 packet at
    /// `bufs[i][offset..len]`. `offset >= VIRTIO_NET_HDR_LEN`: the bytes
    /// before `offset` are scratch for the virtio-net header.
    ///
    /// With offload on, TCP and UDP segments of one flow are coalesced (tun-rs
    /// GRO) into super-packets; this rewrites headers, may append packets to
    /// the buffer of an earlier one (within its capacity) and may swap
    /// buffers in the slice. Errors on single writes (`EAGAIN`, `ENOBUFS`,
    /// `EINVAL` for a malformed packet, ...) are counted in
    /// [`SendReport::dropped`] (a device that is down, `EIO`, in
    /// [`SendReport::down`] too), never returned; only errors that make the
    /// queue unusable (`EBADF`, `EBADFD` once the device is deleted, ...)
    /// and an invalid `offset` are.
    pub fn send_batch(&mut self, bufs: &mut [PacketBuf], offset: usize) -> io::Result<SendReport> {
        if offset < VIRTIO_NET_HDR_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset must be at least VIRTIO_NET_HDR_LEN",
            ));
        }
        let mut report = SendReport::default();
        if bufs.is_empty() {
            return Ok(report);
        }
        if !self.offload {
            for b in bufs.iter() {
                let Some(pkt) = b.as_ref().get(offset..).filter(|p| !p.is_empty()) else {
                    report.dropped += 1;
                    continue;
                };
                if pkt.len() > usize::from(self.mtu) && !oversize_writes_as_is(pkt) {
                    // A TCP super-packet (underlay GRO) without a
                    // virtio-net header: the node could only refuse it (DF)
                    // or cut it into fragments.
                    report.dropped += 1;
                    report.oversize_dropped += 1;
                    continue;
                }
                self.write_counted(pkt, 1, pkt.len(), &mut report)?;
            }
            return Ok(report);
        }
        let n = bufs.len().min(u16::MAX as usize);
        let (bufs, rest) = bufs.split_at_mut(n);
        report.dropped += rest.len();
        let hdr_at = offset - VIRTIO_NET_HDR_LEN;
        if bufs.iter().any(|b| b.len() <= offset) {
            // tun-rs GRO rejects the whole batch for one empty packet: write
            // this (rare) batch one by one instead.
            for b in bufs.iter_mut() {
                if b.len() <= offset {
                    report.dropped += 1;
                    continue;
                }
                if b.len() - offset > usize::from(self.mtu) {
                    self.write_super(b, offset, &mut report)?;
                    continue;
                }
                b.as_mut()[hdr_at..offset].fill(0);
                let frame = &b.as_ref()[hdr_at..];
                self.write_counted(frame, 1, b.len() - offset, &mut report)?;
            }
            return Ok(report);
        }
        // Super-packets (underlay GRO) are written as GSO frames of their
        // own; the runs of ordinary packets between them go through GRO.
        // Writing in batch order keeps every flow in order.
        let mtu = usize::from(self.mtu);
        let mut run = 0;
        for i in 0..bufs.len() {
            if bufs[i].len() - offset <= mtu {
                continue;
            }
            self.write_gro_run(&mut bufs[run..i], offset, &mut report)?;
            self.write_super(&mut bufs[i], offset, &mut report)?;
            run = i + 1;
        }
        self.write_gro_run(&mut bufs[run..], offset, &mut report)?;
        Ok(report)
    }

    /// Writes non-empty, MTU-sized packets with tun-rs GRO.
    fn write_gro_run(
        &mut self,
        bufs: &mut [PacketBuf],
        offset: usize,
        report: &mut SendReport,
    ) -> io::Result<()> {
        if bufs.is_empty() {
            return Ok(());
        }
        let hdr_at = offset - VIRTIO_NET_HDR_LEN;
        for b in bufs.iter_mut() {
            b.as_mut()[hdr_at..offset].fill(GRO_UNWRITTEN);
        }
        self.gro
            .apply_gro(bufs, offset, self.udp_gso)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        for b in bufs.iter() {
            let frame = &b.as_ref()[hdr_at..];
            if frame[0] == GRO_UNWRITTEN && frame[1] == GRO_UNWRITTEN {
                // Merged into another buffer's super-packet.
                continue;
            }
            let segments = gso_segments(frame);
            self.write_counted(frame, segments, gso_packet_bytes(frame), report)?;
        }
        Ok(())
    }

    /// Writes one packet longer than the MTU: a TCP super-packet as a GSO
    /// frame; another packet (e.g. UDP reassembled from outer fragments) as
    /// it is, for the node's stack to fragment or answer frag-needed about,
    /// as it would after the kernel's tunl0; drops what is neither.
    fn write_super(
        &mut self,
        buf: &mut PacketBuf,
        offset: usize,
        report: &mut SendReport,
    ) -> io::Result<()> {
        let hdr_at = offset - VIRTIO_NET_HDR_LEN;
        let frame = &mut buf.as_mut()[hdr_at..];
        let (hdr, pkt) = frame.split_at_mut(VIRTIO_NET_HDR_LEN);
        let len = pkt.len();
        let Some(segments) = tcp4_gso_header(pkt, self.mtu, hdr) else {
            if oversize_writes_as_is(pkt) {
                hdr.fill(0);
                return self.write_counted(frame, 1, len, report);
            }
            tracing::trace!(len, "oversize packet dropped");
            report.dropped += 1;
            report.oversize_dropped += 1;
            return Ok(());
        };
        let before = report.sent;
        self.write_counted(frame, segments, len, report)?;
        if report.sent > before {
            report.gso_written += 1;
        }
        Ok(())
    }

    /// Writes one frame standing for `segments` packets of `bytes` bytes.
    fn write_counted(
        &self,
        frame: &[u8],
        segments: usize,
        bytes: usize,
        report: &mut SendReport,
    ) -> io::Result<()> {
        match self.dev.send(frame) {
            Ok(_) => {
                report.sent += segments;
                report.bytes += bytes;
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                report.dropped += segments;
                report.down += segments;
            }
            Err(e) => {
                tracing::trace!(error = %e, "TUN write dropped");
                report.dropped += segments;
            }
        }
        Ok(())
    }

    /// Writes one packet (e.g. an ICMP error generated locally) from a plain
    /// slice, with a zero virtio-net header in front when offload is on.
    pub fn send_one(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.offload {
            let hdr = [0u8; VIRTIO_NET_HDR_LEN];
            self.dev
                .send_vectored(&[IoSlice::new(&hdr), IoSlice::new(packet)])?;
        } else {
            self.dev.send(packet)?;
        }
        Ok(())
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

impl std::fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunQueue")
            .field("fd", &self.dev.as_raw_fd())
            .field("offload", &self.offload)
            .finish()
    }
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("queues", &self.queues.len())
            .field("offload", &self.offload)
            .finish()
    }
}
