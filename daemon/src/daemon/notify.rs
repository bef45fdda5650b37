//! systemd's readiness protocol (sd_notify(3)), for `Type=notify` units: a
//! datagram of `KEY=VALUE` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! The daemon sends `READY=1` once its routes are installed (with the
//! `STATUS=` line `systemctl status` shows) and `STOPPING=1` when it starts
//! to shut down. Without `$NOTIFY_SOCKET` (not under systemd, or another
//! unit type) nothing is sent. A send that fails is logged and otherwise
//! ignored, as sd_notify's are: the daemon runs the same either way (systemd
//! then times the start out).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::warn;

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to the service manager's notification socket, or nothing
/// when there is none.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket named by `$NOTIFY_SOCKET`; inert when it is unset. Call
    /// before privileges are dropped (opening the socket needs none, but a
    /// path systemd made may not be reachable after a user switch).
    pub fn from_env() -> Notifier {
        match std::env::var_os(NOTIFY_SOCKET) {
            None => Notifier { target: None },
            Some(value) => match value.to_str().map(Notifier::to) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    warn!(socket = ?value, error = %e, "cannot use NOTIFY_SOCKET; readiness is not reported");
                    Notifier { target: None }
                }
                None => {
                    warn!(socket = ?value, "NOTIFY_SOCKET is not UTF-8; readiness is not reported");
                    Notifier { target: None }
                }
            },
        }
    }

    /// A notifier sending to `socket`: a path, or `@name` for the abstract
    /// namespace.
    ///
    /// # Errors
    /// The address is neither, or no datagram socket could be opened.
    pub fn to(socket: &str) -> io::Result<Notifier> {
        let addr = if let Some(name) = socket.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())?
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an absolute path or an @abstract name",
            ));
        };
        Ok(Notifier {
            target: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments).
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                warn!(error = %e, "cannot notify the service manager");
            }
        }
    }

    /// `READY=1`, with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1`, with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }
}

/// A status for a `STATUS=` line: newlines would start another assignment.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn readiness_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("tunl-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        n.ready("routing 3 routes\non tunl0");
        assert_eq!(
            received(&listener),
            "READY=1\nSTATUS=routing 3 routes on tunl0"
        );
        n.stopping("stopping");
        assert_eq!(received(&listener), "STOPPING=1\nSTATUS=stopping");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readiness_reaches_an_abstract_socket() {
        let name = format!("tunl-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to(&format!("@{name}")).unwrap().ready("up");
        assert_eq!(received(&listener), "READY=1\nSTATUS=up");
    }

    #[test]
    fn a_relative_address_is_refused_and_nothing_is_inert() {
        assert!(Notifier::to("notify.sock").is_err());
        Notifier { target: None }.ready("up"); // sends nothing, does not fail
    }
}
