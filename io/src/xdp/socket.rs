//! An AF_XDP socket (XSK) with its own UMEM and four rings, in copy mode
//! with `XDP_USE_NEED_WAKEUP`.
//!
//! The UMEM is split once: the first [`RX_FRAMES`] chunks belong to the
//! receive side (each either in the fill ring, in the RX ring, or being read
//! by [`Xsk::receive`], which gives it straight back to the fill ring), the
//! next [`TX_FRAMES`] to the transmit side (each either free in the
//! socket's free list, lent to exactly one [`UmemFrame`], or in the TX or
//! completion ring until the kernel has sent it). Nothing is allocated per
//! packet or batch.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use socket2::{Domain, Socket, Type};

use super::ring::{Mapping, Ring, Side};
use super::{ETH_HEADER_LEN, XSK_FRAME, XdpError};
use crate::buf::Buffer;

/// Chunks of the receive side, and entries of the fill and RX rings: the
/// fill ring holds every receive chunk, so a burst while the worker is
/// descheduled finds room (a fill ring smaller than the burst drops frames,
/// counted in `rx_fill_ring_empty_descs`).
pub const RX_FRAMES: u32 = 4096;
/// Chunks of the transmit side, and entries of the TX and completion rings.
pub const TX_FRAMES: u32 = 2048;
/// The UMEM of one socket in bytes (counted against `RLIMIT_MEMLOCK` unless
/// the process has `CAP_IPC_LOCK`).
pub const UMEM_BYTES: usize = (RX_FRAMES + TX_FRAMES) as usize * XSK_FRAME as usize;
/// The kernel's headroom in front of every received frame in copy mode
/// (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: usize = 256;
/// The longest frame a receive chunk takes.
pub const MAX_RX_FRAME: usize = XSK_FRAME as usize - XDP_PACKET_HEADROOM;
/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, Linux 6.18): how many frames one
/// `sendto` may send in copy mode (the default is 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// The budget asked for: every frame of a worker's batch in one kick.
const TX_BUDGET: u32 = 256;
/// What one kick sends without `XDP_MAX_TX_SKB_BUDGET` (the kernel's
/// `TX_BATCH_SIZE`).
const DEFAULT_TX_BUDGET: u32 = 32;
/// Kicks per transmit while the kernel answers `EAGAIN` (more frames left
/// than one kick sends, on kernels without `XDP_MAX_TX_SKB_BUDGET`).
const MAX_KICKS: usize = 16;

/// The UMEM: one anonymous mapping, shared by the socket and the frames it
/// lends, so that none of them can outlive it.
#[derive(Debug)]
struct Umem {
    map: Mapping,
}

impl Umem {
    /// The address of chunk `chunk`.
    fn chunk(&self, chunk: u32) -> NonNull<u8> {
        debug_assert!(chunk < RX_FRAMES + TX_FRAMES);
        let offset = chunk as usize * XSK_FRAME as usize;
        assert!(
            offset + XSK_FRAME as usize <= self.map.len(),
            "chunk beyond the UMEM"
        );
        // SAFETY: the chunk lies inside the mapping (asserted just above).
        unsafe { self.map.base().add(offset) }
    }
}

/// A transmit chunk lent to the caller as a packet buffer: TUN reads fill
/// it at [`crate::HEADROOM`] and encap writes the outer header in front,
/// [`ETH_HEADER_LEN`] bytes after the start of the chunk, where
/// [`Xsk::transmit`] puts the Ethernet header. Its capacity is
/// `XSK_FRAME - ETH_HEADER_LEN` while it holds a chunk, 0 once the chunk was
/// sent (until [`Xsk::refill`] lends it a new one).
pub struct UmemFrame {
    umem: Arc<Umem>,
    chunk: Option<u32>,
    /// The first byte of the view: the chunk plus the Ethernet header.
    data: NonNull<u8>,
    len: usize,
}

// SAFETY: the frame's bytes are lent to it alone (a chunk is in at most one
// frame, and the kernel does not touch a lent chunk), and `umem` keeps the
// mapping alive; moving the frame to another thread shares nothing.
unsafe impl Send for UmemFrame {}

impl UmemFrame {
    fn capacity_of(chunk: Option<u32>) -> usize {
        chunk.map_or(0, |_| XSK_FRAME as usize - ETH_HEADER_LEN)
    }

    fn lend(&mut self, chunk: u32) {
        // SAFETY: the chunk lies inside the UMEM (Umem::chunk checks it)
        // and ETH_HEADER_LEN < XSK_FRAME, so data stays inside the chunk.
        self.data = unsafe { self.umem.chunk(chunk).add(ETH_HEADER_LEN) };
        self.chunk = Some(chunk);
        self.len = 0;
    }

    fn take(&mut self) -> Option<u32> {
        self.len = 0;
        self.data = NonNull::dangling();
        self.chunk.take()
    }

    /// Whether it holds a chunk (room to read a packet into).
    pub fn has_chunk(&self) -> bool {
        self.chunk.is_some()
    }
}

impl std::fmt::Debug for UmemFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UmemFrame")
            .field("chunk", &self.chunk)
            .field("len", &self.len)
            .finish()
    }
}

impl AsRef<[u8]> for UmemFrame {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: data points to capacity >= len bytes inside the frame's
        // chunk (or is dangling with len 0), lent to this frame alone; the
        // mapping lives as long as `umem`.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for UmemFrame {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for as_ref; `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }
}

impl Buffer for UmemFrame {
    fn len(&self) -> usize {
        self.len
    }

    fn set_len(&mut self, len: usize) {
        self.len = len.min(Self::capacity_of(self.chunk));
    }

    fn capacity(&self) -> usize {
        Self::capacity_of(self.chunk)
    }

    fn full_mut(&mut self) -> &mut [u8] {
        let cap = Self::capacity_of(self.chunk);
        // SAFETY: data points to `cap` bytes inside the frame's chunk (or is
        // dangling with cap 0), lent to this frame alone, borrowed
        // exclusively through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), cap) }
    }
}

/// What [`Xsk::transmit`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskTxReport {
    /// Frames put on the TX ring.
    pub sent: usize,
    /// Frames not sent: no chunk, an outer packet that does not fit the
    /// chunk, a frame lent by another socket, or no room in the TX ring.
    pub skipped: usize,
    /// Kicks that still found frames left (`EAGAIN`, `EBUSY`, `ENOBUFS`):
    /// the rest goes out with the next kick.
    pub kick_retries: usize,
}

/// The kernel's statistics of one socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStatistics {
    /// Frames dropped for other reasons (too long for a chunk, ...).
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the TX ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Frames dropped because the fill ring was empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Kicks that found the TX ring empty.
    pub tx_ring_empty_descs: u64,
}

/// Reads a socket's [`XskStatistics`] from another thread (the metrics
/// endpoint) while the worker owns the socket.
#[derive(Clone, Debug)]
pub struct XskStatsReader {
    fd: Arc<OwnedFd>,
    queue: u32,
}

impl XskStatsReader {
    /// The RX queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The statistics now.
    ///
    /// # Errors
    /// The OS error of `getsockopt(XDP_STATISTICS)`.
    pub fn read(&self) -> io::Result<XskStatistics> {
        // SAFETY: xdp_statistics is a plain C struct of u64s: all-zero is valid.
        let mut s: libc::xdp_statistics = unsafe { zeroed() };
        get_option(self.fd.as_fd(), libc::XDP_STATISTICS, &mut s)?;
        Ok(XskStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

/// One AF_XDP socket bound to `(ifindex, queue)` in copy mode, owning its
/// UMEM. Put it into the program's map with
/// [`XdpProgram::add_socket`](super::XdpProgram::add_socket) so frames of
/// its queue reach it; it transmits on that queue.
pub struct Xsk {
    fill: Ring<u64>,
    completion: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fd: Arc<OwnedFd>,
    umem: Arc<Umem>,
    /// Transmit chunks neither lent nor in the kernel's rings.
    free: Vec<u32>,
    /// Frames on the TX ring that a kick did not send yet.
    kick_pending: bool,
    /// Frames one kick sends.
    tx_budget: u32,
    queue: u32,
}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd.as_raw_fd())
            .field("queue", &self.queue)
            .field("free", &self.free.len())
            .finish()
    }
}

fn set_option<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a T of size_of::<T>() readable bytes for the
    // duration of the call; the kernel only reads them.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt` of a plain struct; fails unless the kernel wrote all of it.
fn get_option<T>(fd: BorrowedFd<'_>, name: libc::c_int, value: &mut T) -> io::Result<()> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: value points to size_of::<T>() writable bytes of a plain C
    // struct, exclusively borrowed for the call; len says so.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            ptr::from_mut(value).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        // Kernels before 5.4 return shorter (v1) layouts without the flags
        // word that need_wakeup lives in.
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the kernel returned {len} of {} bytes (an older layout)",
                size_of::<T>()
            ),
        ));
    }
    Ok(())
}

impl Xsk {
    /// Creates the socket and its UMEM, maps the rings and binds to queue
    /// `queue` of the interface `ifindex` (copy mode, need_wakeup); the fill
    /// ring is filled with every receive chunk. Needs `CAP_NET_RAW`; the
    /// UMEM ([`UMEM_BYTES`]) counts against `RLIMIT_MEMLOCK` without
    /// `CAP_IPC_LOCK`.
    ///
    /// # Errors
    /// [`XdpError::Socket`] naming the step that failed (`EPERM` without
    /// `CAP_NET_RAW`, `ENOBUFS` over the memlock limit, `EBUSY` when another
    /// socket holds the queue, `EINVAL` for a queue the device lacks).
    pub fn bind(ifindex: u32, queue: u32) -> Result<Xsk, XdpError> {
        let step = |step: &'static str| {
            move |source| XdpError::Socket {
                step,
                queue,
                source,
            }
        };
        let sock =
            Socket::new(Domain::from(libc::AF_XDP), Type::RAW, None).map_err(step("socket"))?;
        let fd: OwnedFd = sock.into();
        let umem = Mapping::anonymous(UMEM_BYTES).map_err(step("map the UMEM"))?;
        // SAFETY: xdp_umem_reg is a plain C struct of integers: all-zero is
        // valid, and zero is what flags and tx_metadata_len must be.
        let mut reg: libc::xdp_umem_reg = unsafe { zeroed() };
        reg.addr = umem.base().as_ptr() as u64;
        reg.len = UMEM_BYTES as u64;
        reg.chunk_size = XSK_FRAME;
        reg.headroom = 0;
        let fd_ref = fd.as_fd();
        set_option(fd_ref, libc::XDP_UMEM_REG, &reg).map_err(step("register the UMEM"))?;
        set_option(fd_ref, libc::XDP_UMEM_FILL_RING, &RX_FRAMES)
            .map_err(step("size the fill ring"))?;
        set_option(fd_ref, libc::XDP_UMEM_COMPLETION_RING, &TX_FRAMES)
            .map_err(step("size the completion ring"))?;
        set_option(fd_ref, libc::XDP_RX_RING, &RX_FRAMES).map_err(step("size the RX ring"))?;
        set_option(fd_ref, libc::XDP_TX_RING, &TX_FRAMES).map_err(step("size the TX ring"))?;
        // SAFETY: xdp_mmap_offsets is a plain C struct of u64s: all-zero is valid.
        let mut off: libc::xdp_mmap_offsets = unsafe { zeroed() };
        get_option(fd_ref, libc::XDP_MMAP_OFFSETS, &mut off)
            .map_err(step("read the ring offsets"))?;
        let map = |what| step(what);
        let mut fill = Ring::map(
            fd_ref,
            &off.fr,
            RX_FRAMES,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            Side::Producer,
        )
        .map_err(map("map the fill ring"))?;
        let completion = Ring::map(
            fd_ref,
            &off.cr,
            TX_FRAMES,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            Side::Consumer,
        )
        .map_err(map("map the completion ring"))?;
        let rx = Ring::map(
            fd_ref,
            &off.rx,
            RX_FRAMES,
            libc::XDP_PGOFF_RX_RING as u64,
            Side::Consumer,
        )
        .map_err(map("map the RX ring"))?;
        let tx = Ring::map(
            fd_ref,
            &off.tx,
            TX_FRAMES,
            libc::XDP_PGOFF_TX_RING as u64,
            Side::Producer,
        )
        .map_err(map("map the TX ring"))?;
        // Every receive chunk goes to the kernel before the bind, so the
        // first frames find room.
        let n = fill.free(RX_FRAMES);
        for i in 0..n {
            fill.write(i, u64::from(i) * u64::from(XSK_FRAME));
        }
        fill.submit(n);
        // Accepted by Linux 6.18 and later; older kernels send 32 frames per
        // kick and answer EAGAIN for the rest, which transmit() handles.
        let tx_budget = match set_option(fd_ref, XDP_MAX_TX_SKB_BUDGET, &TX_BUDGET) {
            Ok(()) => TX_BUDGET,
            Err(e) => {
                tracing::debug!(error = %e, "XDP_MAX_TX_SKB_BUDGET refused; kicks send 32 frames each");
                DEFAULT_TX_BUDGET
            }
        };
        // SAFETY: sockaddr_xdp is a plain C struct of integers: all-zero is valid.
        let mut sa: libc::sockaddr_xdp = unsafe { zeroed() };
        sa.sxdp_family = libc::AF_XDP as libc::sa_family_t;
        sa.sxdp_flags = libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP;
        sa.sxdp_ifindex = ifindex;
        sa.sxdp_queue_id = queue;
        // SAFETY: sa is a valid sockaddr_xdp of the size passed, read by the
        // kernel during the call only.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                ptr::from_ref(&sa).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(step("bind")(io::Error::last_os_error()));
        }
        Ok(Xsk {
            fill,
            completion,
            rx,
            tx,
            fd: Arc::new(fd),
            umem: Arc::new(Umem { map: umem }),
            free: (RX_FRAMES..RX_FRAMES + TX_FRAMES).rev().collect(),
            kick_pending: false,
            tx_budget,
            queue,
        })
    }

    /// The RX queue it is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// How many frames one kick sends in copy mode: 256 where the kernel
    /// took `XDP_MAX_TX_SKB_BUDGET`, its default of 32 otherwise.
    pub fn tx_budget(&self) -> u32 {
        self.tx_budget
    }

    /// A reader of its statistics for another thread.
    pub fn stats_reader(&self) -> XskStatsReader {
        XskStatsReader {
            fd: self.fd.clone(),
            queue: self.queue,
        }
    }

    /// Reads up to `max` received frames, calling `each` with every frame's
    /// bytes (Ethernet header first), then gives their chunks back to the
    /// kernel. Returns how many frames were read; 0 when the RX ring is
    /// empty (wait for the socket to become readable).
    pub fn receive(&mut self, max: u32, mut each: impl FnMut(&[u8])) -> u32 {
        let n = self.rx.ready(max);
        if n == 0 {
            return 0;
        }
        // The fill ring has room for every receive chunk, so for these n.
        let room = self.fill.free(n);
        let base = self.umem.map.base();
        let len = self.umem.map.len();
        for i in 0..n {
            let desc = self.rx.read(i);
            let start = usize::try_from(desc.addr).unwrap_or(usize::MAX);
            let chunk_start = start - start % XSK_FRAME as usize;
            let end = start.saturating_add(desc.len as usize);
            if end <= chunk_start + XSK_FRAME as usize && end <= len {
                // SAFETY: start..end lies inside the mapping and inside one
                // receive chunk, which the kernel handed to us on the RX
                // ring and does not write until it is back on the fill ring
                // (below, after `each` returned).
                let frame = unsafe {
                    std::slice::from_raw_parts(base.as_ptr().add(start), desc.len as usize)
                };
                each(frame);
            }
            if i < room && chunk_start < RX_FRAMES as usize * XSK_FRAME as usize {
                self.fill.write(i, chunk_start as u64);
            }
        }
        self.fill.submit(room.min(n));
        self.rx.release(n);
        if self.fill.needs_wakeup() {
            self.wake_rx();
        }
        n
    }

    /// The kernel asked for a wakeup to refill from the fill ring (not
    /// seen in copy mode so far, but allowed by the protocol).
    fn wake_rx(&self) {
        // SAFETY: a zero-length recvfrom with null buffers is the AF_XDP
        // wakeup; the kernel writes nothing.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
    }

    /// `n` frames to read TUN packets into, each lent a transmit chunk
    /// (fewer chunks than `n` leave the rest empty until [`Xsk::refill`]).
    pub fn tx_frames(&mut self, n: usize) -> Vec<UmemFrame> {
        let mut frames: Vec<UmemFrame> = (0..n)
            .map(|_| UmemFrame {
                umem: self.umem.clone(),
                chunk: None,
                data: NonNull::dangling(),
                len: 0,
            })
            .collect();
        self.refill(&mut frames);
        frames
    }

    /// Takes back the chunks the kernel has sent (the completion ring) and
    /// lends chunks to the frames of `frames` that have none, as far as
    /// there are free ones; kicks the TX ring again if a kick left frames
    /// behind. Frames are reordered so the ones holding a chunk come first:
    /// returns how many do. Frames lent by another socket are left alone.
    pub fn refill(&mut self, frames: &mut [UmemFrame]) -> usize {
        self.reap();
        if self.kick_pending {
            self.kick();
        }
        let mut filled = 0;
        for i in 0..frames.len() {
            if !Arc::ptr_eq(&frames[i].umem, &self.umem) {
                continue;
            }
            if !frames[i].has_chunk() {
                let Some(chunk) = self.free.pop() else {
                    continue;
                };
                frames[i].lend(chunk);
            }
            frames.swap(i, filled);
            filled += 1;
        }
        filled
    }

    /// Moves the sent chunks from the completion ring to the free list.
    fn reap(&mut self) {
        let n = self.completion.ready(TX_FRAMES);
        for i in 0..n {
            let addr = self.completion.read(i);
            let chunk = u32::try_from(addr / u64::from(XSK_FRAME)).unwrap_or(u32::MAX);
            if (RX_FRAMES..RX_FRAMES + TX_FRAMES).contains(&chunk) {
                self.free.push(chunk);
            }
        }
        self.completion.release(n);
    }

    /// Sends outer packets held in `frames`: each `(index, start, dst)` of
    /// `sends` names a frame whose outer IPv4 packet is `frame[start..]`,
    /// to go to the next hop with MAC `dst`. The Ethernet header (`dst`,
    /// `src`, IPv4) is written in front of the packet, inside the chunk, the
    /// frame goes on the TX ring and loses its chunk (to be refilled); then
    /// the kernel is kicked.
    pub fn transmit(
        &mut self,
        frames: &mut [UmemFrame],
        sends: impl IntoIterator<Item = (usize, usize, [u8; 6])>,
        src: [u8; 6],
    ) -> XskTxReport {
        let mut report = XskTxReport::default();
        let mut queued = 0;
        for (index, start, dst) in sends {
            let room = self.tx.free(queued + 1);
            let Some(frame) = frames.get_mut(index) else {
                report.skipped += 1;
                continue;
            };
            let outer_len = frame.len.saturating_sub(start);
            let fits = start <= frame.len && outer_len > 0;
            if room <= queued || !fits || !Arc::ptr_eq(&frame.umem, &self.umem) {
                report.skipped += 1;
                continue;
            }
            let Some(chunk) = frame.chunk else {
                report.skipped += 1;
                continue;
            };
            let chunk_ptr = self.umem.chunk(chunk);
            // The Ethernet header ends where the view's byte `start` begins:
            // at chunk offset `start`, since the view starts ETH_HEADER_LEN in.
            // SAFETY: the chunk is lent to `frame`, which we borrow
            // exclusively; start + ETH_HEADER_LEN <= len + ETH_HEADER_LEN <=
            // XSK_FRAME, so the 14 bytes lie inside the chunk.
            let eth = unsafe {
                std::slice::from_raw_parts_mut(chunk_ptr.as_ptr().add(start), ETH_HEADER_LEN)
            };
            eth[..6].copy_from_slice(&dst);
            eth[6..12].copy_from_slice(&src);
            eth[12..14].copy_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
            let addr = u64::from(chunk) * u64::from(XSK_FRAME) + start as u64;
            self.tx.write(
                queued,
                libc::xdp_desc {
                    addr,
                    len: (ETH_HEADER_LEN + outer_len) as u32,
                    options: 0,
                },
            );
            frame.take();
            queued += 1;
        }
        if queued > 0 {
            self.tx.submit(queued);
            report.sent = queued as usize;
            report.kick_retries = self.kick();
        }
        report
    }

    /// Kicks the kernel to send what is on the TX ring (in copy mode it
    /// sends inside the `sendto`), again while it answers that frames are
    /// left, up to [`MAX_KICKS`] times. Returns the retries.
    fn kick(&mut self) -> usize {
        self.kick_pending = false;
        if !self.tx.needs_wakeup() {
            return 0;
        }
        for retry in 0..MAX_KICKS {
            // SAFETY: a zero-length sendto with null buffers is the AF_XDP
            // TX kick; the kernel reads nothing from user memory but the ring.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                return retry;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                Some(libc::EBUSY | libc::ENOBUFS) => {
                    self.kick_pending = true;
                    return retry + 1;
                }
                _ => return retry,
            }
        }
        self.kick_pending = true;
        MAX_KICKS
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
