//! Link and address setup of an interface, with the classic `SIOCSIF*`
//! ioctls: bring a link up, assign its IPv4 address; and what the XDP
//! underlay needs to know of a device: its MAC (`SIOCGIFHWADDR`), its
//! driver and its real RX queue count (`SIOCETHTOOL`).
//!
//! Each call works in the network namespace of the calling thread, on an
//! `AF_INET` datagram socket opened for it and closed after.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};

/// Brings the interface `name` up (`IFF_UP`), e.g. `lo` in a new namespace.
///
/// # Errors
/// `InvalidInput` for a name that is empty, 16 bytes or longer, or holds a
/// NUL; otherwise the OS error of the socket or of an ioctl (`ENODEV` when
/// there is no such interface, `EPERM` without `CAP_NET_ADMIN`).
pub fn set_link_up(name: &str) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the ifru_flags member of the union, and
    // every bit pattern is a valid c_short.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req)
}

/// Assigns `addr/prefix` to the interface `name` (replacing its primary
/// IPv4 address), as `ip addr add` would for a first address.
///
/// # Errors
/// `InvalidInput` for a prefix length above 32 or an invalid name (as
/// [`set_link_up`]); otherwise the OS error of the socket or of an ioctl.
pub fn set_ipv4_address(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    if prefix > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("prefix length {prefix} is above 32"),
        ));
    }
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req)
}

/// The MAC address of the Ethernet interface `name`.
///
/// # Errors
/// As [`set_link_up`]; `InvalidData` when the device is not Ethernet.
pub fn hardware_address(name: &str) -> io::Result<[u8; 6]> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&sock, libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: SIOCGIFHWADDR filled the ifru_hwaddr member of the union, a
    // sockaddr of plain integers.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{name} is not an Ethernet device (hardware type {})",
                sa.sa_family
            ),
        ));
    }
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(&sa.sa_data) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// `ETHTOOL_GDRVINFO` (linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 0x03;
/// `ETHTOOL_GCHANNELS`.
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// `struct ethtool_drvinfo`: the command and the driver's name are read;
/// the rest is room the kernel writes.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 164],
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct Channels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// The name of the driver of interface `name` (`veth`, `virtio_net`,
/// `mlx5_core`, ...), as `ethtool -i` shows it.
///
/// # Errors
/// As [`set_link_up`]; `EOPNOTSUPP` for a device without ethtool support.
pub fn driver(name: &str) -> io::Result<String> {
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 164],
    };
    ethtool(name, &mut info)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The RX queues interface `name` really uses (`ethtool -l`'s current RX
/// plus combined channels): not the allocated count that `ip -d link`
/// shows as `numrxqueues` (a veth has 2 allocated, 1 in use, by default).
/// At least 1.
///
/// # Errors
/// As [`set_link_up`]; `EOPNOTSUPP` for a device that does not report
/// channels.
pub fn rx_queues(name: &str) -> io::Result<u32> {
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Channels::default()
    };
    ethtool(name, &mut ch)?;
    Ok((ch.rx_count + ch.combined_count).max(1))
}

/// `SIOCETHTOOL` with `data` (a struct starting with its `cmd` word).
fn ethtool<T>(name: &str, data: &mut T) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_data = std::ptr::from_mut(data).cast();
    ioctl(&sock, libc::SIOCETHTOOL, &mut req)
}

/// An `AF_INET` datagram socket for interface ioctls, in the calling
/// thread's namespace (close-on-exec, as socket2 opens every socket).
fn ioctl_socket() -> io::Result<Socket> {
    Socket::new(Domain::IPV4, Type::DGRAM, None)
}

/// An `ifreq` with the name filled in.
pub(crate) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is a plain C struct (chars and a union of plain
    // integers/sockaddrs) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `addr` as the `sockaddr` of an `ifreq`: the bytes of a `sockaddr_in`
/// (family, port 0, the address in network order, zero padding).
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    // sa_data[0..2] is sin_port, sa_data[2..6] is sin_addr.
    for (dst, &octet) in sa_data[2..6].iter_mut().zip(&addr.octets()) {
        *dst = octet as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

fn ioctl(sock: &Socket, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here (SIOC[GS]IF*, SIOCETHTOOL) reads or
    // writes one ifreq, and req points to a valid, exclusively borrowed
    // ifreq; for SIOCETHTOOL its ifru_data points to the command's struct
    // (ethtool() borrows it exclusively for the call), whose layout the
    // command word names.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_in_has_the_layout_of_sockaddr_in() {
        let sa = sockaddr_in(Ipv4Addr::new(10, 20, 42, 31));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        let data: Vec<u8> = sa.sa_data.iter().map(|&b| b as u8).collect();
        // sin_port 0, sin_addr 10.20.42.31, sin_zero.
        assert_eq!(data, [0, 0, 10, 20, 42, 31, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            std::mem::size_of::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_in>()
        );
    }

    #[test]
    fn names_are_checked_before_any_syscall() {
        for name in ["", "sixteen-bytes-xx", "nul\0"] {
            let e = ifreq(name).expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        let e = set_ipv4_address("lo", Ipv4Addr::LOCALHOST, 33).expect_err("prefix 33");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
