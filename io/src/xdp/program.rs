//! tunl's XDP program: loading it with aya, attaching it with a BPF link
//! of tunl's own, putting sockets into its map, reading its counters.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use aya::maps::{MapData, PerCpuArray, XskMap};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};

use super::{XdpError, XdpMode, Xsk};

/// The program object, compiled from `io/bpf/tunl_xdp.bpf.c` by
/// `io/build.rs` (aya needs it 4-byte aligned).
pub static PROGRAM_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tunl_xdp.bpf.o"));

/// The program's name in the object (its `SEC("xdp")` function).
pub const PROGRAM_NAME: &str = "tunl_xdp";
/// The highest RX queue index that can get a socket, plus one (the
/// `tunl_xsks` map's size, `TUNL_MAX_QUEUES` in the C source).
pub const MAX_QUEUES: u32 = 64;

/// `enum bpf_cmd`: `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE` (linux/if_link.h).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The program's counters, summed over CPUs (`tunl_stats` in the C
/// source, in this order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// IPIP frames for tunl handed to the socket of their RX queue.
    pub redirected: u64,
    /// IPIP frames for tunl whose RX queue had no socket: passed to the
    /// stack (the raw IPIP socket gets them).
    pub no_socket: u64,
    /// Every other frame, passed to the stack.
    pub passed: u64,
}

/// Reads [`ProgramStats`] from any thread; needs no capability once the
/// program is loaded (the map's descriptor is enough).
#[derive(Clone)]
pub struct ProgramStatsReader {
    map: Arc<PerCpuArray<MapData, u64>>,
}

impl fmt::Debug for ProgramStatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgramStatsReader").finish_non_exhaustive()
    }
}

impl ProgramStatsReader {
    /// The counters now.
    ///
    /// # Errors
    /// [`XdpError::Map`] when the map cannot be read.
    pub fn read(&self) -> Result<ProgramStats, XdpError> {
        let sum = |i: u32| -> Result<u64, XdpError> {
            let values = self.map.get(&i, 0).map_err(|source| XdpError::Map {
                what: "read tunl_stats",
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(ProgramStats {
            redirected: sum(0)?,
            no_socket: sum(1)?,
            passed: sum(2)?,
        })
    }
}

/// The loaded program and its maps. Attach it with [`XdpProgram::attach`];
/// loading alone changes nothing on any device.
pub struct XdpProgram {
    ebpf: Ebpf,
    stats: ProgramStatsReader,
}

impl fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpProgram").finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// Loads the program for the host whose `tunnel.local` is `local`: only
    /// IPIP frames addressed to it go to tunl's sockets. Needs `CAP_BPF` and
    /// `CAP_NET_ADMIN` (or root).
    ///
    /// # Errors
    /// [`XdpError::Load`] when the object or its maps cannot be created
    /// (no permission, a kernel without these map types), or the verifier
    /// refuses the program.
    pub fn load(local: Ipv4Addr) -> Result<XdpProgram, XdpError> {
        let local_be = u32::from_ne_bytes(local.octets());
        let mut ebpf = EbpfLoader::new()
            // No kernel BTF: the program needs no relocations, and parsing
            // /sys/kernel/btf/vmlinux is most of the load time.
            .btf(None)
            .override_global("tunl_local_addr", &local_be, true)
            .load(PROGRAM_OBJECT)
            .map_err(|e| XdpError::Load {
                what: "load the object and create its maps",
                source: Box::new(e),
            })?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpError::Missing("program tunl_xdp"))?
            .try_into()
            .map_err(|e| XdpError::Load {
                what: "find the XDP program",
                source: Box::new(e),
            })?;
        program.load().map_err(|e| XdpError::Load {
            what: "load the program (verifier)",
            source: Box::new(e),
        })?;
        let stats = ebpf
            .take_map("tunl_stats")
            .ok_or(XdpError::Missing("map tunl_stats"))?;
        let stats = PerCpuArray::try_from(stats).map_err(|source| XdpError::Map {
            what: "open tunl_stats",
            source,
        })?;
        Ok(XdpProgram {
            ebpf,
            stats: ProgramStatsReader {
                map: Arc::new(stats),
            },
        })
    }

    /// Attaches the program to the interface `ifindex` in `mode` through a
    /// BPF link of its own (`BPF_LINK_CREATE`): the attachment lasts exactly
    /// as long as the returned [`XdpLink`], and goes with the process
    /// however it ends (kill -9 included). It never replaces another
    /// program: a device that has one (attached by netlink or a link, in
    /// either mode) is refused with [`XdpError::Attach`] and
    /// [`AttachRefusal::AlreadyAttached`]. There is no fallback to a netlink
    /// attachment, which would outlive the process.
    ///
    /// # Errors
    /// [`XdpError::Attach`] with the reason.
    pub fn attach(&self, ifindex: u32, mode: XdpMode) -> Result<XdpLink, XdpError> {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(XdpError::Missing("program tunl_xdp"))?
            .try_into()
            .map_err(|e| XdpError::Load {
                what: "find the XDP program",
                source: Box::new(e),
            })?;
        let fd = program.fd().map_err(|e| XdpError::Load {
            what: "get the program's descriptor",
            source: Box::new(e),
        })?;
        let flags = match mode {
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
        };
        let link = link_create(fd.as_fd().as_raw_fd(), ifindex, flags).map_err(|source| {
            XdpError::Attach {
                ifindex,
                mode,
                refusal: AttachRefusal::of(&source),
                source,
            }
        })?;
        Ok(XdpLink {
            fd: link,
            ifindex,
            mode,
        })
    }

    /// Puts `socket` into the map at its RX queue: frames for tunl arriving
    /// on that queue go to it. Needs `CAP_BPF`.
    ///
    /// # Errors
    /// [`XdpError::QueueTooHigh`] for a queue past [`MAX_QUEUES`],
    /// [`XdpError::Map`] when the map refuses it.
    pub fn add_socket(&mut self, socket: &Xsk) -> Result<(), XdpError> {
        let queue = socket.queue();
        if queue >= MAX_QUEUES {
            return Err(XdpError::QueueTooHigh { queue });
        }
        let map = self
            .ebpf
            .map_mut("tunl_xsks")
            .ok_or(XdpError::Missing("map tunl_xsks"))?;
        let mut map = XskMap::try_from(map).map_err(|source| XdpError::Map {
            what: "open tunl_xsks",
            source,
        })?;
        map.set(queue, socket.as_raw_fd(), 0)
            .map_err(|source| XdpError::Map {
                what: "insert the socket into tunl_xsks",
                source,
            })
    }

    /// A reader of the program's counters.
    pub fn stats_reader(&self) -> ProgramStatsReader {
        self.stats.clone()
    }
}

/// How an attach was refused, from its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachRefusal {
    /// Another XDP program (or link) is attached to the device (`EBUSY` in
    /// the same mode, `EEXIST` in the other): tunl never replaces it.
    AlreadyAttached,
    /// No permission (`EPERM`, `EACCES`): needs `CAP_NET_ADMIN` and `CAP_BPF`.
    NotPermitted,
    /// The kernel has no XDP BPF links (`EINVAL`; Linux 5.9 added them).
    NoLinks,
    /// The device's driver has no native XDP (`EOPNOTSUPP`).
    ModeUnsupported,
    /// Another error.
    Other,
}

impl AttachRefusal {
    fn of(e: &io::Error) -> AttachRefusal {
        match e.raw_os_error() {
            Some(libc::EBUSY | libc::EEXIST) => AttachRefusal::AlreadyAttached,
            Some(libc::EPERM | libc::EACCES) => AttachRefusal::NotPermitted,
            Some(libc::EINVAL) => AttachRefusal::NoLinks,
            Some(libc::EOPNOTSUPP) => AttachRefusal::ModeUnsupported,
            _ => AttachRefusal::Other,
        }
    }
}

impl fmt::Display for AttachRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachRefusal::AlreadyAttached => {
                "another XDP program is attached to the device (tunl does not replace it)"
            }
            AttachRefusal::NotPermitted => "not permitted (needs CAP_NET_ADMIN and CAP_BPF)",
            AttachRefusal::NoLinks => "the kernel has no XDP BPF links (Linux 5.9 or later)",
            AttachRefusal::ModeUnsupported => "the driver does not support this XDP mode",
            AttachRefusal::Other => "refused",
        })
    }
}

/// The program attached to a device. Dropping it (or the process ending)
/// detaches the program.
#[derive(Debug)]
pub struct XdpLink {
    fd: OwnedFd,
    ifindex: u32,
    mode: XdpMode,
}

impl XdpLink {
    /// The interface it is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The mode it is attached in.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }
}

impl AsFd for XdpLink {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `BPF_LINK_CREATE` of an XDP link for `prog_fd` on `ifindex`.
fn link_create(prog_fd: i32, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    // The link_create member of union bpf_attr: prog_fd, target_ifindex,
    // attach_type, flags; the rest zero (the kernel checks it is).
    let mut attr = [0u32; 16];
    attr[0] = prog_fd as u32;
    attr[1] = ifindex;
    attr[2] = BPF_XDP;
    attr[3] = flags;
    // SAFETY: attr is a zeroed 64-byte prefix of union bpf_attr, readable
    // for the size passed; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| io::Error::other("bpf returned a bad descriptor"))?;
    // SAFETY: the kernel returned a new descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_errno() {
        let of = |n| AttachRefusal::of(&io::Error::from_raw_os_error(n));
        assert_eq!(of(libc::EBUSY), AttachRefusal::AlreadyAttached);
        assert_eq!(of(libc::EEXIST), AttachRefusal::AlreadyAttached);
        assert_eq!(of(libc::EPERM), AttachRefusal::NotPermitted);
        assert_eq!(of(libc::EINVAL), AttachRefusal::NoLinks);
        assert_eq!(of(libc::EOPNOTSUPP), AttachRefusal::ModeUnsupported);
        assert_eq!(of(libc::ENOMEM), AttachRefusal::Other);
    }

    #[test]
    fn the_object_is_an_elf_with_the_program() {
        assert_eq!(&PROGRAM_OBJECT[..4], b"\x7fELF");
        let has = |s: &[u8]| PROGRAM_OBJECT.windows(s.len()).any(|w| w == s);
        assert!(has(PROGRAM_NAME.as_bytes()));
        assert!(has(b"tunl_xsks") && has(b"tunl_stats") && has(b"tunl_local_addr"));
    }
}
