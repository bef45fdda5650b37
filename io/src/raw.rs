//! Raw IPv4 sockets: IPIP receive (`recvmmsg`), IPIP send (`sendmmsg`),
//! ICMP errors from the underlay.

use std::io::{self, Read};
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::{IoError, PacketBuf};

/// The most packets one `recvmmsg`/`sendmmsg` call handles; larger slices
/// are handled in several calls (send) or up to this many (receive).
pub const MAX_BATCH: usize = 128;

/// How many times per call [`IpipSender::send_batch`] waits for the socket
/// to become writable when the send buffer is full, before it counts the
/// rest of the batch in [`SendMsgReport::buffer_full`].
const EAGAIN_WAITS: usize = 1;
/// How long one such wait lasts at most: short, so that a worker whose send
/// buffer stays full goes back to its other sockets (decap) instead of
/// stalling on this one.
const EAGAIN_WAIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 100_000,
};
/// How many times per call [`IpipSender::send_batch`] yields and resends a
/// packet the device dropped (`ENOBUFS`) before it counts it as failed.
const ENOBUFS_RETRIES: usize = 256;

const IPPROTO_IPIP: i32 = libc::IPPROTO_IPIP;

/// Sets `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (beyond `rmem_max`/`wmem_max`,
/// needs `CAP_NET_ADMIN`), falling back to the capped `SO_RCVBUF`/`SO_SNDBUF`.
fn force_buffer(sock: &Socket, size: usize, receive: bool) -> io::Result<()> {
    let force = if receive {
        libc::SO_RCVBUFFORCE
    } else {
        libc::SO_SNDBUFFORCE
    };
    let val = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let Err(e) = set_option(sock, libc::SOL_SOCKET, force, val) else {
        return Ok(());
    };
    tracing::debug!(
        error = %e,
        size,
        "SO_*BUFFORCE refused, falling back to the capped size"
    );
    if receive {
        sock.set_recv_buffer_size(size)
    } else {
        sock.set_send_buffer_size(size)
    }
}

/// `setsockopt` with a plain value (an int, or a struct of one `u32` such as
/// `icmp_filter`).
fn set_option<T: Copy>(
    sock: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: setsockopt reads exactly size_of::<T>() bytes from &value,
    // a plain Copy value that lives for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn raw_socket(protocol: i32, what: &str) -> Result<Socket, IoError> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(protocol)))
        .map_err(|e| IoError::from_os(what, None, e))?;
    sock.set_nonblocking(true)
        .map_err(|e| IoError::from_os(what, None, e))?;
    Ok(sock)
}

/// What [`IpipReceiver::recv_batch`] received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvReport {
    /// Buffers filled: `bufs[..received]`, truncated ones included (with
    /// length 0).
    pub received: usize,
    /// Packets larger than their buffer, dropped (their buffer has length 0).
    pub truncated: usize,
}

/// Receives every IPv4 protocol-4 (IPIP) packet addressed to this host,
/// outer header included: `socket(AF_INET, SOCK_RAW, IPPROTO_IPIP)`.
/// Non-blocking.
///
/// Its presence also stops the kernel from answering IPIP packets with ICMP
/// protocol-unreachable. Every such socket gets its own copy of every
/// packet: open one per host, not one per thread.
pub struct IpipReceiver {
    sock: Socket,
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside `iovs` and `msgs` are scratch: every call
// rewrites them from its `&mut` arguments before the syscall and nothing
// reads them afterwards, so moving the struct to another thread cannot
// expose a dangling or shared pointer.
unsafe impl Send for IpipReceiver {}

/// Zeroed `iovec`/`mmsghdr` scratch arrays of `MAX_BATCH` entries.
fn scratch() -> (Box<[libc::iovec]>, Box<[libc::mmsghdr]>) {
    let iov = libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    };
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers, for
    // which all-zero bytes (null pointers, zero lengths) are a valid value.
    let msg: libc::mmsghdr = unsafe { mem::zeroed() };
    (
        vec![iov; MAX_BATCH].into_boxed_slice(),
        vec![msg; MAX_BATCH].into_boxed_slice(),
    )
}

impl IpipReceiver {
    /// Opens the socket, non-blocking, with a receive buffer of `rcvbuf`
    /// bytes (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`).
    pub fn open(rcvbuf: usize) -> Result<Self, IoError> {
        let what = "open raw IPIP receive socket";
        let sock = raw_socket(IPPROTO_IPIP, what)?;
        force_buffer(&sock, rcvbuf, true).map_err(|e| IoError::from_os(what, None, e))?;
        let (iovs, msgs) = scratch();
        Ok(Self { sock, iovs, msgs })
    }

    /// Receives up to `min(bufs.len(), MAX_BATCH)` packets with one
    /// `recvmmsg`. Each packet is received at offset 0 of its buffer, up to
    /// the buffer's capacity, and the buffer's length is set to the packet
    /// length. A truncated packet (`MSG_TRUNC`) gets length 0 and is counted
    /// in [`RecvReport::truncated`]. `WouldBlock` when nothing is queued.
    pub fn recv_batch(&mut self, bufs: &mut [PacketBuf]) -> io::Result<RecvReport> {
        let n = bufs.len().min(MAX_BATCH);
        if n == 0 {
            return Ok(RecvReport::default());
        }
        for (iov, buf) in self.iovs.iter_mut().zip(&mut bufs[..n]) {
            let buf = buf.full_mut();
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
        }
        // Pointers into the scratch arrays are taken once from their base,
        // after the last write to them.
        let iov_base = self.iovs.as_mut_ptr();
        for (i, msg) in self.msgs[..n].iter_mut().enumerate() {
            let hdr = &mut msg.msg_hdr;
            hdr.msg_name = ptr::null_mut();
            hdr.msg_namelen = 0;
            hdr.msg_iov = iov_base.wrapping_add(i);
            hdr.msg_iovlen = 1;
            hdr.msg_control = ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            msg.msg_len = 0;
        }
        let got = loop {
            // SAFETY: msgs[..n] are initialised above; each points to one
            // iovec covering the whole, exclusively borrowed capacity of
            // bufs[i], which outlives the call. No name or control buffers.
            let rc = unsafe {
                libc::recvmmsg(
                    self.sock.as_raw_fd(),
                    self.msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut report = RecvReport {
            received: got,
            truncated: 0,
        };
        for (buf, msg) in bufs.iter_mut().zip(&self.msgs[..got]) {
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                buf.set_len(0);
                report.truncated += 1;
            } else {
                buf.set_len(msg.msg_len as usize);
            }
        }
        Ok(report)
    }
}

impl AsRawFd for IpipReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl std::fmt::Debug for IpipReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpipReceiver")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

/// What [`IpipSender::send_batch`] did.
#[derive(Debug, Default)]
pub struct SendMsgReport {
    /// Packets the kernel accepted.
    pub sent: usize,
    /// Packets that failed (each skipped; the rest of the batch went on).
    pub failed: usize,
    /// The error of the last failed packet.
    pub last_error: Option<io::Error>,
    /// Packets not sent because the send buffer stayed full (`EAGAIN`)
    /// after the one short wait; not counted in `failed`.
    pub buffer_full: usize,
    /// Packets the device dropped (`ENOBUFS`, e.g. a full veth ring) and
    /// that were sent again after a yield.
    pub nobufs_retries: usize,
}

/// Sends complete IPv4 packets whose header we wrote:
/// `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)` (`IP_HDRINCL` implied; it
/// receives nothing). Non-blocking.
///
/// The kernel fills in the header checksum and total length, and an ID when
/// it is 0. It cannot send a packet larger than the route's device MTU
/// (`EMSGSIZE`): split before encapsulating.
pub struct IpipSender {
    sock: Socket,
    batch: SendBatch<libc::sockaddr_in>,
}

impl IpipSender {
    /// Opens the socket, non-blocking, with a send buffer of `sndbuf` bytes
    /// (`SO_SNDBUFFORCE`, falling back to `SO_SNDBUF`).
    pub fn open(sndbuf: usize) -> Result<Self, IoError> {
        let what = "open raw IP send socket";
        let sock = raw_socket(libc::IPPROTO_RAW, what)?;
        force_buffer(&sock, sndbuf, false).map_err(|e| IoError::from_os(what, None, e))?;
        // IP_RECVERR: without it the kernel reports a packet the device
        // dropped (a full veth ring: ENOBUFS) as sent; with it the batch
        // stops there and send_linked backs off and retries the packet.
        set_option(&sock, libc::IPPROTO_IP, libc::IP_RECVERR, 1 as libc::c_int)
            .map_err(|e| IoError::from_os(what, None, e))?;
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        Ok(Self {
            sock,
            batch: SendBatch::new(addr),
        })
    }

    /// Sends `packets[i]` (a whole IPv4 packet) to `dsts[i]` with `sendmmsg`,
    /// in chunks of [`MAX_BATCH`]. A packet the kernel refuses (`EMSGSIZE`,
    /// `EHOSTUNREACH`, `ENOBUFS`, ...) is skipped and counted in
    /// [`SendMsgReport::failed`]; the rest of the batch goes on. Allocates
    /// nothing.
    ///
    /// When the send buffer is full (`EAGAIN`), it waits for writability
    /// with `ppoll` once per call, for at most 100 µs, then counts the
    /// unsent rest in [`SendMsgReport::buffer_full`].
    ///
    /// Errors: `InvalidInput` when the slices differ in length; fatal socket
    /// errors (`EBADF`, ...).
    pub fn send_batch(
        &mut self,
        packets: &[&[u8]],
        dsts: &[Ipv4Addr],
    ) -> io::Result<SendMsgReport> {
        let fd = self.sock.as_raw_fd();
        self.batch.send(fd, packets, dsts, |addr, dst| {
            addr.sin_addr.s_addr = u32::from(*dst).to_be();
        })
    }
}

impl AsRawFd for IpipSender {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl std::fmt::Debug for IpipSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpipSender")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

/// `ICMP_FILTER` of `SOL_RAW` (linux/icmp.h): a bit set per ICMP type to
/// drop.
const ICMP_FILTER: libc::c_int = 1;
/// ICMP types queued to [`IcmpReceiver`]: destination unreachable (3),
/// redirect (5), time exceeded (11).
const ICMP_WANTED: u32 = (1 << 3) | (1 << 5) | (1 << 11);

/// A raw ICMP socket for underlay errors about our outer packets: only
/// destination-unreachable (3), redirect (5) and time-exceeded (11) are
/// queued (`ICMP_FILTER`). Non-blocking.
pub struct IcmpReceiver {
    sock: Socket,
}

impl IcmpReceiver {
    /// Opens the socket with its filter.
    pub fn open() -> Result<Self, IoError> {
        let what = "open raw ICMP socket";
        let sock = raw_socket(libc::IPPROTO_ICMP, what)?;
        set_option(&sock, libc::SOL_RAW, ICMP_FILTER, !ICMP_WANTED)
            .map_err(|e| IoError::from_os(what, None, e))?;
        Ok(Self { sock })
    }

    /// Receives one ICMP packet, IPv4 header included, into `buf`; returns
    /// its length (truncated to `buf.len()`). `WouldBlock` when none.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // One recv(2) (socket2's `Read`); the socket is non-blocking.
            match (&self.sock).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl AsRawFd for IcmpReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl std::fmt::Debug for IcmpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcmpReceiver")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

/// Sends complete IPv4 packets straight to the underlay device:
/// `socket(AF_PACKET, SOCK_DGRAM, ETH_P_IP)` with `PACKET_QDISC_BYPASS`; the
/// kernel prepends the Ethernet header for the given next-hop MAC.
/// Non-blocking.
///
/// Compared with [`IpipSender`] it skips, per packet, the route lookup,
/// the netfilter OUTPUT/POSTROUTING hooks, the neighbour layer and the
/// qdisc. The caller provides the next hop's MAC (from the neighbour table, see
/// [`Netlink::ipv4_neighbours`](crate::netlink::Netlink::ipv4_neighbours)) and
/// complete headers: the kernel fills in nothing (IPv4 total length and
/// header checksum must be right). Outer packets sent this way are not seen
/// by the node's OUTPUT firewall rules.
pub struct PacketSender {
    sock: Socket,
    ifindex: i32,
    batch: SendBatch<libc::sockaddr_ll>,
}

impl PacketSender {
    /// Opens the socket for the Ethernet device with index `ifindex`, with a
    /// send buffer of `sndbuf` bytes.
    pub fn open(ifindex: u32, sndbuf: usize) -> Result<Self, IoError> {
        let what = "open AF_PACKET send socket";
        let proto = (libc::ETH_P_IP as u16).to_be();
        // Protocol 0: the socket only sends (each message names ETH_P_IP in
        // its address); with ETH_P_IP it would get a copy of every IPv4
        // packet of the namespace.
        let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))
            .map_err(|e| IoError::from_os(what, None, e))?;
        sock.set_nonblocking(true)
            .map_err(|e| IoError::from_os(what, None, e))?;
        force_buffer(&sock, sndbuf, false).map_err(|e| IoError::from_os(what, None, e))?;
        set_option(
            &sock,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            1 as libc::c_int,
        )
        .map_err(|e| IoError::from_os(what, None, e))?;
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| IoError::InvalidConfig(format!("interface index {ifindex}")))?;
        // SAFETY: sockaddr_ll is a plain C struct of integers, for which
        // all-zero bytes are a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        Ok(Self {
            sock,
            ifindex,
            batch: SendBatch::new(addr),
        })
    }

    /// Sends `packets[i]` (a whole IPv4 packet, headers complete) to the
    /// Ethernet address `macs[i]`, in chunks of [`MAX_BATCH`], with the same
    /// error handling as [`IpipSender::send_batch`]: a refused packet is
    /// skipped and counted, `ENOBUFS` (the device dropped it) is retried
    /// after a yield, `EAGAIN` waits briefly for room.
    pub fn send_batch(&mut self, packets: &[&[u8]], macs: &[[u8; 6]]) -> io::Result<SendMsgReport> {
        let (fd, ifindex) = (self.sock.as_raw_fd(), self.ifindex);
        self.batch.send(fd, packets, macs, |addr, mac| {
            addr.sll_ifindex = ifindex;
            addr.sll_addr[..6].copy_from_slice(mac);
        })
    }
}

/// The `sendmmsg` scratch of a sender whose messages are addressed with a
/// socket address of type `A`: up to [`MAX_BATCH`] headers, iovecs and
/// addresses, allocated once.
struct SendBatch<A> {
    iovs: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    addrs: Box<[A]>,
}

// SAFETY: the raw pointers in the scratch arrays are rewritten by every
// `send` before use and never read after it returns, so moving the arrays
// to another thread between calls shares nothing.
unsafe impl<A: Send> Send for SendBatch<A> {}

impl<A: Clone> SendBatch<A> {
    fn new(addr: A) -> Self {
        let (iovs, msgs) = scratch();
        SendBatch {
            iovs,
            msgs,
            addrs: vec![addr; MAX_BATCH].into_boxed_slice(),
        }
    }

    /// Sends `packets[i]` to `targets[i]` on `fd` in chunks of
    /// [`MAX_BATCH`]; `address` writes a target into its message's socket
    /// address (the rest of the template given to `new` stays as is).
    fn send<T>(
        &mut self,
        fd: RawFd,
        packets: &[&[u8]],
        targets: &[T],
        mut address: impl FnMut(&mut A, &T),
    ) -> io::Result<SendMsgReport> {
        if packets.len() != targets.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "one destination per packet is needed",
            ));
        }
        let mut report = SendMsgReport::default();
        let mut retries = Retries::default();
        for (packets, targets) in packets.chunks(MAX_BATCH).zip(targets.chunks(MAX_BATCH)) {
            let n = packets.len();
            for ((addr, iov), (packet, target)) in self
                .addrs
                .iter_mut()
                .zip(self.iovs.iter_mut())
                .zip(packets.iter().zip(targets))
            {
                address(addr, target);
                *iov = send_iovec(packet);
            }
            link_headers(&mut self.msgs[..n], &mut self.addrs, &mut self.iovs);
            // SAFETY: link_headers just pointed msgs[..n] at addresses in
            // self.addrs and iovecs over packets[..n]; all of them outlive
            // the call and none is touched until it returns.
            unsafe { send_linked(fd, &mut self.msgs[..n], &mut report, &mut retries)? };
        }
        Ok(report)
    }
}

/// An iovec over a packet to send (the kernel only reads a send iovec).
fn send_iovec(packet: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: packet.as_ptr().cast_mut().cast(),
        iov_len: packet.len(),
    }
}

/// Points `msgs[i]` at `addrs[i]` (a socket address of type `A`) and one
/// iovec, `iovs[i]`. The pointers are taken once from the slices' bases,
/// after the last write to them; `addrs` and `iovs` are at least as long as
/// `msgs`.
fn link_headers<A>(msgs: &mut [libc::mmsghdr], addrs: &mut [A], iovs: &mut [libc::iovec]) {
    debug_assert!(addrs.len() >= msgs.len() && iovs.len() >= msgs.len());
    let iov_base = iovs.as_mut_ptr();
    let addr_base = addrs.as_mut_ptr();
    for (i, msg) in msgs.iter_mut().enumerate() {
        let hdr = &mut msg.msg_hdr;
        hdr.msg_name = addr_base.wrapping_add(i).cast();
        hdr.msg_namelen = mem::size_of::<A>() as libc::socklen_t;
        hdr.msg_iov = iov_base.wrapping_add(i);
        hdr.msg_iovlen = 1;
        hdr.msg_control = ptr::null_mut();
        hdr.msg_controllen = 0;
        hdr.msg_flags = 0;
        msg.msg_len = 0;
    }
}

/// What one `send_batch` call may still spend on waiting and resending.
#[derive(Debug, Default)]
struct Retries {
    waits: usize,
    nobufs: usize,
}

/// Sends every message of `msgs` with `sendmmsg`: a packet the kernel
/// refuses is skipped and counted, `ENOBUFS` (the device dropped it, seen
/// with `IP_RECVERR`) is resent after a yield, `EAGAIN` waits briefly for
/// room, within the budgets of `retries`.
///
/// # Safety
/// Every message of `msgs` must point to a valid socket address and iovecs
/// over readable memory that stay valid and unchanged during the call.
unsafe fn send_linked(
    fd: RawFd,
    msgs: &mut [libc::mmsghdr],
    report: &mut SendMsgReport,
    retries: &mut Retries,
) -> io::Result<()> {
    let n = msgs.len();
    let mut start = 0;
    while start < n {
        // SAFETY: msgs[start..n] point to valid addresses and iovecs (this
        // function's contract), which the kernel only reads; it writes each
        // sent message's `msg_len`, which the exclusive borrow allows.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                msgs[start..].as_mut_ptr(),
                (n - start) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc > 0 {
            start += rc as usize;
            report.sent += rc as usize;
            continue;
        }
        if rc == 0 {
            // Not documented to happen for a non-empty batch.
            report.failed += n - start;
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::ENOBUFS) if retries.nobufs < ENOBUFS_RETRIES => {
                // The device (or its queue) dropped the packet: give the
                // receiver of the ring a moment, then send it again.
                retries.nobufs += 1;
                report.nobufs_retries += 1;
                std::thread::yield_now();
            }
            Some(libc::EAGAIN) if retries.waits < EAGAIN_WAITS => {
                retries.waits += 1;
                wait_writable(fd);
            }
            Some(libc::EAGAIN) => {
                report.buffer_full += n - start;
                return Ok(());
            }
            Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT) => return Err(e),
            _ => {
                // The packet at `start` failed: skip it.
                tracing::trace!(error = %e, "send failed; packet skipped");
                report.failed += 1;
                report.last_error = Some(e);
                start += 1;
            }
        }
    }
    Ok(())
}

fn wait_writable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd and EAGAIN_WAIT a valid timespec for
    // the duration of the call; no signal mask is passed.
    unsafe { libc::ppoll(&raw mut pfd, 1, &EAGAIN_WAIT, ptr::null()) };
}

impl AsRawFd for PacketSender {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl std::fmt::Debug for PacketSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketSender")
            .field("fd", &self.sock.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .finish()
    }
}
