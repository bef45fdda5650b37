//! The client side of the control socket: what `tunl route`, `tunl status`
//! and `tunl stats` (and the lab) use to talk to a daemon.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::wire::{
    MAX_REQUEST, ROUTES_PER_CHUNK, Request, Response, Route, RouteChange, RouteChunk, StreamHeader,
};

/// How long the client waits for a reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits for the reply to a streamed `route_replace`
/// (the daemon validates and installs the whole set before it answers).
pub const REPLACE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket (there is no socket file, or no
    /// process behind it).
    #[error("no tunl daemon is running: cannot connect to {path}: {source}")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The socket, or a folder on its path, may not be used by this user.
    #[error(
        "permission denied on the control socket {path}: the daemon makes it root's with mode 0600, \
         so only root may use it; run this as root (sudo tunl ...), or point --socket at a \
         socket you may use"
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to the control socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The connection broke or the reply was not understood.
    #[error("control socket {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// What a failed `connect` to the socket at `path` means: no daemon
/// (no socket file, or nobody listening), no permission, or something else.
pub fn connect_error(path: &Path, source: io::Error) -> ClientError {
    let path = path.to_owned();
    match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path, source }
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path, source },
        _ => ClientError::Connect { path, source },
    }
}

/// `value` as one JSON line.
fn encode_line<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

/// A reply read straight into its result's type: the same object as
/// [`Response`], without keeping the result's text first (at 100k routes
/// a `status` reply is megabytes, read once this way).
#[derive(serde::Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
struct Reply<T> {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    result: Option<T>,
}

/// A connection to a daemon's control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = std::os::unix::net::UnixStream::connect(path)
            .map_err(|source| connect_error(path, source))?;
        let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
        let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
        Ok(Client {
            path: path.to_owned(),
            reader: BufReader::new(stream),
        })
    }

    fn protocol(&self, message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Sends a request and returns the raw reply (the daemon's, also when
    /// it refused the request and closed the connection before it was all
    /// written).
    pub fn call_raw(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send_then_read([encode_line(request)])
    }

    /// Reads one reply line, as a [`Response`] or a [`Reply`].
    fn read_reply<R: serde::de::DeserializeOwned>(&mut self) -> Result<R, ClientError> {
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .map_err(|e| self.protocol(format!("read: {e}")))?;
        if n == 0 {
            return Err(self.protocol("the daemon closed the connection"));
        }
        serde_json::from_str(&reply).map_err(|e| self.protocol(format!("bad reply: {e}")))
    }

    /// Makes the daemon's route set exactly `routes`, in one step: as one
    /// `route_replace` line when it fits [`MAX_REQUEST`] (what every daemon
    /// understands), else as a stream (a header, then chunks of
    /// [`ROUTES_PER_CHUNK`] routes; `docs/control-protocol.md`). When the
    /// daemon refuses a stream midway and closes the connection, its reply
    /// is read and returned ([`ClientError::Refused`]), not the failed
    /// write.
    pub fn replace(
        &mut self,
        routes: Vec<Route>,
        allow_empty: bool,
    ) -> Result<RouteChange, ClientError> {
        let request = Request::RouteReplace {
            routes,
            allow_empty,
        };
        let mut line = serde_json::to_vec(&request).map_err(|e| self.protocol(e.to_string()))?;
        let Request::RouteReplace { routes, .. } = request else {
            unreachable!("built above");
        };
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(REPLACE_TIMEOUT));
        let response = if line.len() < MAX_REQUEST {
            line.push(b'\n');
            self.send_then_read([Ok(line)])
        } else {
            drop(line);
            self.stream(&routes, allow_empty)
        };
        let _ = self.reader.get_ref().set_read_timeout(Some(CLIENT_TIMEOUT));
        self.decode(response?)
    }

    /// Sends a streamed `route_replace` of `routes` and reads the reply.
    fn stream(
        &mut self,
        routes: &[Route],
        allow_empty: bool,
    ) -> Result<Reply<RouteChange>, ClientError> {
        let header = StreamHeader::route_replace(routes.len(), allow_empty);
        let chunks = routes
            .chunks(ROUTES_PER_CHUNK)
            .map(|c| encode_line(&RouteChunk { routes: c.to_vec() }));
        self.send_then_read(std::iter::once(encode_line(&header)).chain(chunks))
    }

    /// Writes `lines`, then reads one reply. A failed write (the daemon
    /// refused and closed the connection) is reported as the daemon's
    /// reply when one is there to read.
    fn send_then_read<R: serde::de::DeserializeOwned>(
        &mut self,
        lines: impl IntoIterator<Item = Result<Vec<u8>, serde_json::Error>>,
    ) -> Result<R, ClientError> {
        for line in lines {
            let line = line.map_err(|e| self.protocol(e.to_string()))?;
            if let Err(write) = self.reader.get_mut().write_all(&line) {
                return match self.read_reply() {
                    Ok(reply) => Ok(reply),
                    Err(_) => Err(self.protocol(format!("write: {write}"))),
                };
            }
        }
        self.read_reply()
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, r: Reply<T>) -> Result<T, ClientError> {
        if !r.ok {
            return Err(ClientError::Refused(
                r.error.unwrap_or_else(|| "request failed".to_owned()),
            ));
        }
        match r.result {
            Some(result) => Ok(result),
            // A missing result reads as `null` (a unit result, say).
            None => {
                serde_json::from_str("null").map_err(|e| self.protocol(format!("bad result: {e}")))
            }
        }
    }

    /// Sends a request and decodes a successful result as `T`.
    pub fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        request: &Request,
    ) -> Result<T, ClientError> {
        let r = self.send_then_read([encode_line(request)])?;
        self.decode(r)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::control::RouteList;

    /// A one-connection server that answers every line with `reply`.
    fn answering(name: &str, reply: &'static str) -> (PathBuf, std::thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("tunl-client-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                reader.get_mut().write_all(reply.as_bytes()).unwrap();
                line.clear();
            }
        });
        (path, server)
    }

    #[test]
    fn a_refusal_carries_the_daemons_message() {
        let (path, server) = answering("refused", "{\"ok\":false,\"error\":\"no such thing\"}\n");
        let mut c = Client::connect(&path).unwrap();
        match c.call::<RouteList>(&Request::RouteList {}) {
            Err(ClientError::Refused(m)) => assert_eq!(m, "no such thing"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        drop(c);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_reply_that_is_not_the_protocol_is_a_protocol_error() {
        let (path, server) = answering("garbage", "hello\n");
        let mut c = Client::connect(&path).unwrap();
        let e = c.call::<RouteList>(&Request::RouteList {}).unwrap_err();
        assert!(matches!(e, ClientError::Protocol { .. }), "{e:?}");
        assert!(e.to_string().contains("bad reply"), "{e}");
        drop(c);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn connect_errors_say_what_is_needed() {
        let path = Path::new("/run/tunl/tunl.sock");
        let e = |errno| connect_error(path, io::Error::from_raw_os_error(errno));
        for errno in [libc_errno::ENOENT, libc_errno::ECONNREFUSED] {
            let err = e(errno);
            assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
            assert!(err.to_string().starts_with("no tunl daemon is running"));
        }
        for errno in [libc_errno::EACCES, libc_errno::EPERM] {
            let err = e(errno);
            assert!(
                matches!(err, ClientError::PermissionDenied { .. }),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with("permission denied on the control socket /run/tunl/tunl.sock"),
                "{text}"
            );
            assert!(text.contains("only root may use it"), "{text}");
            assert!(!text.contains("no tunl daemon"), "{text}");
        }
        let err = e(libc_errno::ENOTSOCK);
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    }

    /// The errno values used above (std has no names for them).
    mod libc_errno {
        pub const EPERM: i32 = nix::errno::Errno::EPERM as i32;
        pub const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
        pub const EACCES: i32 = nix::errno::Errno::EACCES as i32;
        pub const ENOTSOCK: i32 = nix::errno::Errno::ENOTSOCK as i32;
        pub const ECONNREFUSED: i32 = nix::errno::Errno::ECONNREFUSED as i32;
    }

    #[test]
    fn no_daemon_says_so() {
        let path =
            std::env::temp_dir().join(format!("tunl-client-none-{}.sock", std::process::id()));
        let e = Client::connect(&path).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e:?}");
        assert!(e.to_string().contains("no tunl daemon is running"), "{e}");
    }
}
