//! Link and address setup of an interface, with the classic `SIOCSIF*`
//! ioctls: bring a link up, assign its IPv4 address.
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
    // SAFETY: every request used here (SIOC[GS]IF*) reads or writes one
    // ifreq, and req points to a valid, exclusively borrowed ifreq.
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
