//! Helpers for tests and tools: a private network namespace per thread, and
//! a wait for readability.
//!
//! A network namespace entered with [`unshare_thread_netns`] belongs to the
//! calling thread only: sockets, TUN devices and netlink handles created on
//! that thread afterwards live in it, and it vanishes when the last of them
//! is closed. Tests use this to stay out of the host's namespace (bring its
//! `lo` up with [`link::set_link_up`](crate::link::set_link_up)).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Moves the calling thread (only) into a new, empty network namespace.
///
/// Fails with a message naming the missing privilege when the process is not
/// root (no `CAP_SYS_ADMIN`).
pub fn unshare_thread_netns() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches no memory of ours; in a
    // multi-threaded process CLONE_NEWNET affects only the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("unshare(CLONE_NEWNET) failed: {e} (needs root or CAP_SYS_ADMIN)"),
        ));
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is
/// readable. For tests and tools; the dataplane uses its own poller.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
