//! The daemon's side of the control socket: bind it, accept connections,
//! read request lines, hand each request to the main loop and write its reply.
//!
//! [`bind`] creates the socket with mode 0600, so only root (its owner) may
//! connect. Each connection is served by its own task ([`serve_connection`]),
//! which reads one request per line (at most [`MAX_REQUEST`] bytes, each
//! within [`READ_TIMEOUT`]), parses it, hands it to the daemon's main loop
//! over a channel as a [`Call`] and writes the reply as one line. The main
//! loop handles calls one at a time, so route changes never interleave.
//!
//! A streamed `route_replace` (a header, then chunk lines) is gathered by
//! the connection's task, never by the main loop, so a slow client holds
//! only its own connection: its routes go to the main loop as one
//! `route_replace` once the last chunk is in. One stream is received (and
//! applied) at a time, so at most [`MAX_REPLACE_ROUTES`] routes are held
//! for streams however many clients try; it must arrive within
//! [`STREAM_TIMEOUT`]. A bad stream is answered with the error and the
//! connection closed, since the lines after it cannot be told apart from
//! requests.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::wire::{
    Incoming, MAX_REPLACE_ROUTES, MAX_REQUEST, READ_TIMEOUT, ReplaceStream, Request, Response,
    STREAM_TIMEOUT, parse_line,
};

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

/// Control connections served at once; more are answered with an error
/// and closed (each open one costs a task and its buffers: 5,000 idle ones
/// took 55 MiB).
pub const MAX_CONNECTIONS: usize = 64;

/// How often a failing `accept` (out of file descriptors, say) is logged:
/// the first failure at once, then one line per interval with the count.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A log line that may be written at most once per interval; the events in
/// between are counted and reported with the next line.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One more event at `now`: `Some(n)` when it is to be logged, `n`
    /// being the events not logged since the last line; `None` when it is
    /// only counted.
    pub fn event(&mut self, now: tokio::time::Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now < last + self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepts connections until the channel closes, one task each, at most
/// [`MAX_CONNECTIONS`] at once: a connection past that gets an error reply
/// (`too many control connections`) and is closed. A failing `accept` is
/// retried every 100 ms and logged at most once per
/// [`ACCEPT_ERROR_LOG_INTERVAL`].
pub async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let streams = StreamSlot::new();
    let mut errors = LogThrottle::new(ACCEPT_ERROR_LOG_INTERVAL);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match open.clone().try_acquire_owned() {
                Ok(permit) => {
                    let calls = calls.clone();
                    let streams = streams.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, calls, streams).await;
                        drop(permit);
                    });
                }
                Err(_) => refuse(&stream),
            },
            Err(e) => {
                if let Some(more) = errors.event(tokio::time::Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        failed_since_last_line = more,
                        "control socket accept failed; retrying every 100 ms, logged at most every {} s",
                        ACCEPT_ERROR_LOG_INTERVAL.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if calls.is_closed() {
            return;
        }
    }
}

/// Answers a connection past [`MAX_CONNECTIONS`] with an error, without
/// waiting (a client that does not read loses the reply), and closes it.
fn refuse(stream: &UnixStream) {
    let reply = Response::error(format!(
        "too many control connections: {MAX_CONNECTIONS} are open; close one and try again"
    ));
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
    tracing::debug!("control connection refused: {MAX_CONNECTIONS} are open");
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

/// The right to receive a streamed `route_replace`: one stream at a time,
/// daemon-wide (clones share it).
#[derive(Debug, Clone)]
pub struct StreamSlot(std::sync::Arc<tokio::sync::Semaphore>);

impl StreamSlot {
    /// A free slot.
    pub fn new() -> StreamSlot {
        StreamSlot(std::sync::Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

impl Default for StreamSlot {
    fn default() -> StreamSlot {
        StreamSlot::new()
    }
}

/// Serves one connection: request lines in, reply lines out, until EOF, an
/// over-long line, a read timeout, a bad stream or a write error.
pub async fn serve_connection(stream: UnixStream, calls: mpsc::Sender<Call>, streams: StreamSlot) {
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
                let _ = reply(&mut write, &Response::error(too_long())).await;
                return;
            }
            Ok(Ok(Line::Request(line))) => line,
        };
        let response = match parse_line(&line) {
            Err(e) => {
                tracing::debug!(error = %e, "control request refused");
                if line_starts_a_stream(&line) {
                    // Its chunks follow: they are no requests.
                    let _ = reply(&mut write, &Response::error(e)).await;
                    return;
                }
                Response::error(e)
            }
            Ok(Incoming::Request(request)) => call(&calls, request).await,
            Ok(Incoming::Stream(replace)) => {
                let Ok(_permit) = streams.0.clone().try_acquire_owned() else {
                    let e = "another streamed route_replace is being received or applied; \
                             try again when it is done";
                    let _ = reply(&mut write, &Response::error(e)).await;
                    return;
                };
                match receive_stream(&mut reader, &mut buf, replace).await {
                    Ok(request) => call(&calls, request).await,
                    Err(StreamEnd::Eof) => {
                        tracing::debug!("streamed route_replace abandoned by its client");
                        return;
                    }
                    Err(StreamEnd::Refused(e)) => {
                        tracing::debug!(error = %e, "streamed route_replace refused");
                        let _ = reply(&mut write, &Response::error(e)).await;
                        return;
                    }
                }
            }
        };
        if reply(&mut write, &response).await.is_err() {
            return;
        }
    }
}

fn too_long() -> String {
    format!("request longer than {MAX_REQUEST} bytes")
}

/// Whether a refused line was meant as a stream header (a `route_replace`
/// with `count`), so chunks are to be expected after it.
fn line_starts_a_stream(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| {
        v.get("cmd").and_then(|c| c.as_str()) == Some("route_replace") && v.get("count").is_some()
    })
}

/// Hands `request` to the main loop and waits for its reply.
async fn call(calls: &mpsc::Sender<Call>, request: Request) -> Response {
    let (tx, rx) = oneshot::channel();
    if calls.send(Call { request, reply: tx }).await.is_err() {
        return Response::error("the daemon is stopping");
    }
    rx.await
        .unwrap_or_else(|_| Response::error("the daemon is stopping"))
}

/// Why a stream ended before its last chunk.
enum StreamEnd {
    /// The client closed the connection (or it broke): nobody to answer.
    Eof,
    /// A bad chunk, an over-long line or a timeout: the reply.
    Refused(String),
}

/// Reads the chunks of `replace` until it is complete, each line within
/// [`READ_TIMEOUT`] and the whole within [`STREAM_TIMEOUT`].
async fn receive_stream<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    mut replace: ReplaceStream,
) -> Result<Request, StreamEnd> {
    let deadline = tokio::time::Instant::now() + STREAM_TIMEOUT;
    while !replace.is_complete() {
        let until = deadline.min(tokio::time::Instant::now() + READ_TIMEOUT);
        let line = match tokio::time::timeout_at(until, read_line(reader, buf)).await {
            Err(_) => {
                let why = if until == deadline {
                    format!(
                        "route set refused, nothing changed: the route_replace stream took \
                         longer than {} s ({} of {} routes arrived)",
                        STREAM_TIMEOUT.as_secs(),
                        replace.received(),
                        replace.count()
                    )
                } else {
                    format!(
                        "route set refused, nothing changed: read timeout in the \
                         route_replace stream ({} of {} routes arrived)",
                        replace.received(),
                        replace.count()
                    )
                };
                return Err(StreamEnd::Refused(why));
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => return Err(StreamEnd::Eof),
            Ok(Ok(Line::TooLong)) => {
                return Err(StreamEnd::Refused(format!(
                    "route set refused, nothing changed: a chunk of the route_replace stream \
                     is {}",
                    too_long()
                )));
            }
            Ok(Ok(Line::Request(line))) => line,
        };
        replace.push(&line).map_err(StreamEnd::Refused)?;
    }
    debug_assert!(replace.count() <= MAX_REPLACE_ROUTES);
    Ok(replace.into_request())
}

async fn reply(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};

    use std::net::Ipv4Addr;

    use super::*;
    use crate::control::{Client, RouteList};

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
            // Garbage on one connection gets an error, then it goes on.
            let mut raw = BufReader::new(std::os::unix::net::UnixStream::connect(&p).unwrap());
            let mut line = String::new();
            raw.get_mut().write_all(b"nonsense\n").unwrap();
            raw.read_line(&mut line).unwrap();
            let resp: Response = serde_json::from_str(&line).unwrap();
            assert!(!resp.ok && resp.error.unwrap().contains("not JSON"));
            line.clear();
            raw.get_mut()
                .write_all(b"{\"cmd\":\"route_list\"}\n")
                .unwrap();
            raw.read_line(&mut line).unwrap();
            let resp: Response = serde_json::from_str(&line).unwrap();
            assert!(resp.ok, "{line}");
            // An over-long line: an error, then the connection closes.
            let mut raw = BufReader::new(std::os::unix::net::UnixStream::connect(&p).unwrap());
            let big = vec![b'x'; MAX_REQUEST + 10];
            let _ = raw.get_mut().write_all(&big);
            let mut line = String::new();
            raw.read_line(&mut line).unwrap();
            assert!(line.contains("longer than"), "{line}");
            line.clear();
            assert_eq!(raw.read_line(&mut line).unwrap(), 0, "closed: {line}");
        })
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_accept_error_log_is_throttled_and_counts_what_it_skipped() {
        let mut t = LogThrottle::new(Duration::from_secs(10));
        let t0 = tokio::time::Instant::now();
        assert_eq!(t.event(t0), Some(0), "the first at once");
        // Every 100 ms for 10 s: counted, not logged.
        for i in 1..100 {
            assert_eq!(t.event(t0 + Duration::from_millis(100) * i), None);
        }
        assert_eq!(t.event(t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(t.event(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.event(t0 + Duration::from_secs(60)), Some(1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_past_the_limit_are_refused_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("tunl-ctl-cap-{}", std::process::id()));
        let path = dir.join("t.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(accept_loop(listener, tx));
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let _ = call.reply.send(Response::ok(RouteList::default()));
            }
        });
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let connect = || {
                let s = std::os::unix::net::UnixStream::connect(&p).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            };
            // Idle connections up to the limit, each served (it answers).
            let mut open: Vec<_> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
            for s in open.iter_mut().take(1) {
                s.write_all(b"{\"cmd\":\"route_list\"}\n").unwrap();
                let mut line = String::new();
                BufReader::new(&*s).read_line(&mut line).unwrap();
                assert!(line.contains("\"ok\":true"), "{line}");
            }
            // One more: refused, saying why, and closed.
            let mut extra = connect();
            let mut text = String::new();
            extra.read_to_string(&mut text).unwrap();
            assert!(
                text.contains("too many control connections: 64 are open"),
                "{text:?}"
            );
            // Closing one makes room.
            drop(open.pop());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let mut s = connect();
                s.write_all(b"{\"cmd\":\"route_list\"}\n").unwrap();
                let mut line = String::new();
                let _ = BufReader::new(&s).read_line(&mut line);
                if line.contains("\"ok\":true") {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "no room: {line}");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_reaches_the_main_loop_as_one_replace_and_bad_ones_are_answered() {
        use crate::control::{Route, RouteChange, StreamHeader};
        let dir = std::env::temp_dir().join(format!("tunl-ctl-stream-{}", std::process::id()));
        let path = dir.join("t.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(accept_loop(listener, tx));
        // The "main loop": answers a replace with the count it received.
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let n = match call.request {
                    Request::RouteReplace { routes, .. } => routes.len(),
                    _ => usize::MAX,
                };
                let _ = call.reply.send(Response::ok(RouteChange {
                    unchanged: n,
                    ..RouteChange::default()
                }));
            }
        });
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let routes: Vec<Route> = (0..3000u32)
                .map(|i| Route {
                    prefix: ipnetwork::Ipv4Network::new((0x0a00_0000 + i * 64).into(), 26)
                        .unwrap(),
                    via: Ipv4Addr::new(172, 16, 0, 1),
                })
                .collect();
            // Too long for one line: streamed, one call of 3000 routes.
            let mut c = Client::connect(&p).unwrap();
            let change = c.replace(routes.clone(), false).unwrap();
            assert_eq!(change.unchanged, 3000);
            // The connection goes on serving requests.
            let change = c.replace(routes[..2].to_vec(), false).unwrap();
            assert_eq!(change.unchanged, 2);
            // A stream announcing one route less than it sends: refused,
            // and the client reads the daemon's error, not a broken pipe.
            let mut raw = std::os::unix::net::UnixStream::connect(&p).unwrap();
            let header = serde_json::to_vec(&StreamHeader::route_replace(1, false)).unwrap();
            raw.write_all(&header).unwrap();
            raw.write_all(b"\n{\"routes\":[{\"prefix\":\"10.0.0.0/26\",\"via\":\"1.2.3.4\"},{\"prefix\":\"10.0.1.0/26\",\"via\":\"1.2.3.4\"}]}\n").unwrap();
            let mut text = String::new();
            raw.read_to_string(&mut text).unwrap();
            assert!(text.contains("more than the 1 announced"), "{text}");
            // Over the cap: refused at the header, with the client still
            // writing chunks.
            let mut many: Vec<Route> = Vec::new();
            for i in 0..(MAX_REPLACE_ROUTES as u32 + 1) {
                many.push(Route {
                    prefix: ipnetwork::Ipv4Network::new(i.into(), 32).unwrap(),
                    via: Ipv4Addr::new(172, 16, 0, 1),
                });
            }
            let e = Client::connect(&p).unwrap().replace(many, false).unwrap_err();
            assert!(
                matches!(&e, crate::control::ClientError::Refused(m) if m.contains("at most 250000")),
                "{e:?}"
            );
            // A stream that stops halfway holds only its own connection:
            // others are answered meanwhile, and a second stream is told to
            // wait for the first.
            let mut half = std::os::unix::net::UnixStream::connect(&p).unwrap();
            half.write_all(&header).unwrap();
            half.write_all(b"\n").unwrap();
            let other = Client::connect(&p)
                .unwrap()
                .call_raw(&Request::Status {})
                .unwrap();
            assert!(other.ok, "{other:?}");
            std::thread::sleep(Duration::from_millis(100));
            let e = Client::connect(&p)
                .unwrap()
                .replace(routes.clone(), false)
                .unwrap_err();
            assert!(e.to_string().contains("another streamed route_replace"), "{e}");
            drop(half);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                match Client::connect(&p).unwrap().replace(routes.clone(), false) {
                    Ok(change) => {
                        assert_eq!(change.unchanged, 3000);
                        break;
                    }
                    Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
