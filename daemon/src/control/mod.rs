//! The control socket: a Unix stream socket speaking newline-delimited JSON
//! (see `docs/control-protocol.md`).
//!
//! The daemon binds it at start ([`bind`]): mode 0600, so only root (its
//! owner) may connect. Each connection is served by its own task
//! ([`serve_connection`]), which reads one request per line (at most
//! [`MAX_REQUEST`] bytes, each within [`READ_TIMEOUT`]), parses it, hands it
//! to the daemon's main loop over a channel and writes the reply as one line.
//! The main loop handles requests one at a time, so route changes never
//! interleave. The client side ([`Client`]) is what `tunl route`, `tunl
//! status` and `tunl stats` use.

use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long the daemon waits for a request line (or the rest of one).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client waits for a reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A route as the protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The remote block.
    pub prefix: Ipv4Network,
    /// The node owning it.
    pub via: Ipv4Addr,
}

/// A request, one JSON object per line: `{"cmd": "route_add", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add a route, or change its next hop (idempotent).
    RouteAdd {
        /// The remote block.
        prefix: Ipv4Network,
        /// The node owning it.
        via: Ipv4Addr,
    },
    /// Remove a route (idempotent: removing an absent route succeeds).
    RouteDel {
        /// The block.
        prefix: Ipv4Network,
    },
    /// List the routes.
    RouteList {},
    /// Make the route set exactly `routes`, in one step.
    RouteReplace {
        /// The whole new set.
        routes: Vec<Route>,
    },
    /// Device, MTU, per-node traffic, refused sources.
    Status {},
    /// Every counter, with drops by reason.
    Stats {},
}

/// The reply to a request: `{"ok": true, "result": ...}` or
/// `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The command's result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                error: None,
                result: Some(v),
            },
            Err(e) => Response::error(format!("cannot encode the result: {e}")),
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            result: None,
        }
    }
}

/// Result of `route_add`, `route_del` and `route_replace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChange {
    /// Routes added or given a new next hop.
    pub added: Vec<Route>,
    /// Blocks removed.
    pub removed: Vec<Ipv4Network>,
    /// Routes left as they were.
    pub unchanged: usize,
}

/// Result of `route_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteList {
    /// Every route, sorted by block.
    pub routes: Vec<Route>,
}

/// One remote node in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's underlay address.
    pub node: Ipv4Addr,
    /// The blocks routed to it.
    pub blocks: Vec<Ipv4Network>,
    /// The tunnel MTU toward it (lowered by underlay frag-needed).
    pub path_mtu: u16,
    /// Inner packets sent to it.
    pub tx_packets: u64,
    /// Inner bytes sent to it.
    pub tx_bytes: u64,
    /// Inner packets received from it.
    pub rx_packets: u64,
    /// Inner bytes received from it.
    pub rx_bytes: u64,
    /// Unix time in milliseconds of the last packet either way.
    pub last_seen_unix_ms: Option<u64>,
}

/// A refused IPIP source in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedStatus {
    /// The outer source address.
    pub source: Ipv4Addr,
    /// Packets refused.
    pub packets: u64,
    /// Unix time in milliseconds of the last one.
    pub last_seen_unix_ms: u64,
}

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The TUN device.
    pub device: String,
    /// The tunnel MTU.
    pub mtu: u16,
    /// The local underlay address.
    pub local: Ipv4Addr,
    /// The address on the device, if any.
    pub address: Option<Ipv4Network>,
    /// This node's pod blocks.
    pub blocks: Vec<Ipv4Network>,
    /// Dataplane worker threads.
    pub workers: usize,
    /// Number of routes.
    pub routes: usize,
    /// Unix time in milliseconds when the reply was made.
    pub now_unix_ms: u64,
    /// Every remote node, by address.
    pub nodes: Vec<NodeStatus>,
    /// IPIP sources refused (at most 32 remembered).
    pub refused: Vec<RefusedStatus>,
    /// Refused packets from sources past that table.
    pub refused_other_packets: u64,
}

/// Result of `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every counter by name (`tx_packets`, ...), in a fixed order.
    pub counters: Vec<(String, u64)>,
    /// Drops by reason name, every reason listed.
    pub drops: Vec<(String, u64)>,
    /// Sum of `drops`.
    pub drops_total: u64,
}

impl Stats {
    /// A counter by name.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .chain(&self.drops)
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Unix time in milliseconds.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------- server

/// A parsed request and where its reply goes.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub request: Request,
    /// The daemon's reply.
    pub reply: oneshot::Sender<Response>,
}

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A daemon answers on the socket already.
    #[error(
        "another tunl daemon is serving the control socket {0}; stop it, or set another [control] socket"
    )]
    InUse(PathBuf),
    /// Creating the folder, binding or setting the mode failed.
    #[error("cannot bind the control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Binds the control socket at `path` (mode 0600): fails when a daemon
/// answers there, replaces a stale socket file a dead daemon left.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(BindError::InUse(path.to_owned()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Ok(_) => {
            return Err(io_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        Err(_) => {}
    }
    // Bind with a umask that leaves no window where others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Accepts connections until the channel closes, one task each.
pub async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, calls.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if calls.is_closed() {
            return;
        }
    }
}

enum Line {
    Request(Vec<u8>),
    TooLong,
    Eof,
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Line> {
    buf.clear();
    let n = reader
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.len() > MAX_REQUEST {
        return Ok(Line::TooLong);
    }
    Ok(Line::Request(std::mem::take(buf)))
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty request".to_owned());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("request is not JSON: {e}"))?;
    if let Some(cmd) = value.get("cmd") {
        let known = [
            "route_add",
            "route_del",
            "route_list",
            "route_replace",
            "status",
            "stats",
        ];
        match cmd.as_str() {
            Some(c) if !known.contains(&c) => {
                return Err(format!(
                    "unknown command {c:?}; known: {}",
                    known.join(", ")
                ));
            }
            None => return Err("\"cmd\" must be a string".to_owned()),
            _ => {}
        }
    } else if value.is_object() {
        return Err("request has no \"cmd\"".to_owned());
    }
    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
}

/// Serves one connection: request lines in, reply lines out, until EOF, an
/// over-long line, a read timeout or a write error.
pub async fn serve_connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        let line = match tokio::time::timeout(READ_TIMEOUT, read_line(&mut reader, &mut buf)).await
        {
            Err(_) => {
                let _ = reply(&mut write, &Response::error("read timeout")).await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => return,
            Ok(Ok(Line::TooLong)) => {
                let msg = format!("request longer than {MAX_REQUEST} bytes");
                let _ = reply(&mut write, &Response::error(msg)).await;
                return;
            }
            Ok(Ok(Line::Request(line))) => line,
        };
        let response = match parse_request(&line) {
            Err(e) => Response::error(e),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send(Call { request, reply: tx }).await.is_err() {
                    Response::error("the daemon is stopping")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::error("the daemon is stopping"))
                }
            }
        };
        if reply(&mut write, &response).await.is_err() {
            return;
        }
    }
}

async fn reply(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

// ---------------------------------------------------------------- client

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket.
    #[error("no tunl daemon is running: cannot connect to {path}: {source}")]
    NotRunning {
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

/// A connection to a daemon's control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
            ClientError::NotRunning {
                path: path.to_owned(),
                source,
            }
        })?;
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

    /// Sends a request and returns the raw reply.
    pub fn call_raw(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(request).map_err(|e| self.protocol(e.to_string()))?;
        line.push(b'\n');
        self.reader
            .get_mut()
            .write_all(&line)
            .map_err(|e| self.protocol(format!("write: {e}")))?;
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

    /// Sends a request and decodes a successful result as `T`.
    pub fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        request: &Request,
    ) -> Result<T, ClientError> {
        let r = self.call_raw(request)?;
        if !r.ok {
            return Err(ClientError::Refused(
                r.error.unwrap_or_else(|| "request failed".to_owned()),
            ));
        }
        serde_json::from_value(r.result.unwrap_or(serde_json::Value::Null))
            .map_err(|e| self.protocol(format!("bad result: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::RouteAdd {
                prefix: "10.20.105.192/26".parse().unwrap(),
                via: Ipv4Addr::new(172, 16, 36, 5),
            },
            Request::RouteDel {
                prefix: "10.20.105.192/26".parse().unwrap(),
            },
            Request::RouteList {},
            Request::RouteReplace { routes: vec![] },
            Request::Status {},
            Request::Stats {},
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(line.as_bytes()).unwrap(), r, "{line}");
        }
        assert_eq!(
            serde_json::to_string(&Request::RouteList {}).unwrap(),
            r#"{"cmd":"route_list"}"#
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let cases: [(&[u8], &str); 7] = [
            (b"{", "not JSON"),
            (b"", "empty"),
            (b"\xff\xfe", "UTF-8"),
            (br#"{"cmd":"reboot"}"#, "unknown command"),
            (br#"{"prefix":"10.0.0.0/8"}"#, "no \"cmd\""),
            (
                br#"{"cmd":"route_add","prefix":"10.0.0.0/33","via":"1.2.3.4"}"#,
                "bad request",
            ),
            (br#"{"cmd":"route_list","extra":1}"#, "bad request"),
        ];
        for (line, want) in cases {
            let e = parse_request(line).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn server_answers_garbage_and_survives() {
        let dir = std::env::temp_dir().join(format!("tunl-ctl-unit-{}", std::process::id()));
        let path = dir.join("t.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&path), Err(BindError::InUse(_))));
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(accept_loop(listener, tx));
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let _ = call.reply.send(Response::ok(RouteList::default()));
            }
        });
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = Client::connect(&p).unwrap();
            let r: RouteList = c.call(&Request::RouteList {}).unwrap();
            assert!(r.routes.is_empty());
            // Garbage on the same connection gets an error, then it goes on.
            c.reader.get_mut().write_all(b"nonsense\n").unwrap();
            let mut line = String::new();
            c.reader.read_line(&mut line).unwrap();
            let resp: Response = serde_json::from_str(&line).unwrap();
            assert!(!resp.ok && resp.error.unwrap().contains("not JSON"));
            let r: RouteList = c.call(&Request::RouteList {}).unwrap();
            assert!(r.routes.is_empty());
            // An over-long line: an error, then the connection closes.
            let mut c = Client::connect(&p).unwrap();
            let big = vec![b'x'; MAX_REQUEST + 10];
            let _ = c.reader.get_mut().write_all(&big);
            let mut line = String::new();
            c.reader.read_line(&mut line).unwrap();
            assert!(line.contains("longer than"), "{line}");
        })
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
