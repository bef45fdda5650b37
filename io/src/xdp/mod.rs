//! The AF_XDP underlay: tunl's XDP program and its sockets.
//!
//! - [`XdpProgram`]: the program of `io/bpf/tunl_xdp.bpf.c`, compiled by
//!   `io/build.rs` with clang and embedded ([`PROGRAM_OBJECT`]), loaded with
//!   aya. It sends IPIP frames addressed to `tunnel.local` (no IPv4
//!   options, not fragments, short enough for a chunk) to the socket of
//!   their RX queue, and passes everything else, so the stack (and tunl's
//!   raw IPIP socket) sees all that tunl's sockets do not take.
//! - [`XdpLink`]: the program attached to a device with tunl's own
//!   `BPF_LINK_CREATE`, which goes with the process (kill -9 included) and
//!   never replaces another program.
//! - [`Xsk`]: an AF_XDP socket with its own UMEM and rings (copy mode,
//!   need_wakeup). It receives frames into the UMEM ([`Xsk::receive`]) and
//!   transmits from it ([`Xsk::transmit`]); the transmit chunks are lent as
//!   packet buffers ([`UmemFrame`], a [`crate::Buffer`]), so pod packets are
//!   read from TUN straight into the memory the kernel sends from.
//!
//! Setting up needs privileges that the daemon drops afterwards: loading
//! and attaching need `CAP_BPF` and `CAP_NET_ADMIN`, a socket needs
//! `CAP_NET_RAW`, inserting it into the map `CAP_BPF`; each UMEM
//! ([`UMEM_BYTES`]) counts against `RLIMIT_MEMLOCK` unless the process has
//! `CAP_IPC_LOCK`. Reading the counters later needs none.

mod program;
mod ring;
mod socket;

use std::fmt;
use std::io;

pub use program::{
    AttachRefusal, MAX_QUEUES, PROGRAM_NAME, PROGRAM_OBJECT, ProgramStats, ProgramStatsReader,
    XdpLink, XdpProgram,
};
pub use socket::{
    MAX_RX_FRAME, RX_FRAMES, TX_FRAMES, UMEM_BYTES, UmemFrame, Xsk, XskStatistics, XskStatsReader,
    XskTxReport,
};

/// The UMEM chunk size, one value for the program's length check and the
/// sockets (set by `io/build.rs`).
pub const XSK_FRAME: u32 = parse_u32(env!("TUNL_XSK_FRAME"));
/// The Ethernet header in front of every frame.
pub const ETH_HEADER_LEN: usize = 14;
/// The largest underlay MTU the sockets carry: a received frame (Ethernet
/// header plus the outer packet) must fit [`MAX_RX_FRAME`].
pub const MAX_UNDERLAY_MTU: u32 = (MAX_RX_FRAME - ETH_HEADER_LEN) as u32;

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u32;
    while i < b.len() {
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

const _: () = assert!(XSK_FRAME == 2048 || XSK_FRAME == 4096);
// A transmit frame holds the Ethernet header, the outer header (in the
// buffer's HEADROOM) and an inner packet of the largest tunnel MTU.
const _: () = assert!(
    ETH_HEADER_LEN + crate::HEADROOM + MAX_UNDERLAY_MTU as usize - 20 <= XSK_FRAME as usize
);

/// How the program runs on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Generic (skb) mode: works on every device; on veth it is the faster
    /// one (native mode there copies each frame into a page pool and turns
    /// TSO off on the peer).
    Generic,
    /// Native (driver) mode: before the stack allocates an skb, where the
    /// driver supports it.
    Native,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
        })
    }
}

/// Why the XDP underlay could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// The program or its maps could not be loaded.
    #[error("cannot {what}: {source} (needs CAP_BPF and CAP_NET_ADMIN)")]
    Load {
        /// The step.
        what: &'static str,
        /// aya's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The object lacks a program or map it should have.
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    /// The program could not be attached to the device.
    #[error("cannot attach XDP ({mode}) to interface {ifindex}: {refusal}: {source}")]
    Attach {
        /// The interface.
        ifindex: u32,
        /// The mode asked for.
        mode: XdpMode,
        /// Why, from the errno.
        refusal: AttachRefusal,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A map operation failed.
    #[error("cannot {what}: {source}")]
    Map {
        /// The step.
        what: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// A socket could not be set up.
    #[error(
        "AF_XDP socket for queue {queue}: cannot {step}: {source}{}",
        socket_hint(source)
    )]
    Socket {
        /// The step (`register the UMEM`, `bind`, ...).
        step: &'static str,
        /// The RX queue.
        queue: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device has more queues than the map holds.
    #[error("RX queue {queue} is beyond the {MAX_QUEUES} queues tunl's XDP map holds")]
    QueueTooHigh {
        /// The queue.
        queue: u32,
    },
}

fn socket_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOBUFS | libc::ENOMEM) => {
            " (the UMEM counts against RLIMIT_MEMLOCK: raise it, e.g. LimitMEMLOCK= in systemd, or keep CAP_IPC_LOCK)"
        }
        Some(libc::EPERM) => " (needs CAP_NET_RAW)",
        Some(libc::EBUSY) => " (another AF_XDP socket holds this queue)",
        _ => "",
    }
}

impl XdpError {
    /// Whether another XDP program on the device refused the attach.
    pub fn is_already_attached(&self) -> bool {
        matches!(
            self,
            XdpError::Attach {
                refusal: AttachRefusal::AlreadyAttached,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_size_comes_from_the_build() {
        assert_eq!(XSK_FRAME, 2048);
        assert_eq!(MAX_RX_FRAME, 1792);
        assert_eq!(MAX_UNDERLAY_MTU, 1778);
        assert_eq!(UMEM_BYTES, 6144 * 2048);
    }

    #[test]
    fn socket_errors_name_the_fix() {
        let e = XdpError::Socket {
            step: "register the UMEM",
            queue: 0,
            source: io::Error::from_raw_os_error(libc::ENOBUFS),
        };
        assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
        let e = XdpError::Attach {
            ifindex: 2,
            mode: XdpMode::Generic,
            refusal: AttachRefusal::AlreadyAttached,
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(e.is_already_attached());
        assert!(e.to_string().contains("does not replace"), "{e}");
    }
}
