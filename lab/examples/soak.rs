//! The soak: the seed cluster (two nodes, a pod on each, a tunl daemon per
//! node) under mixed load with route churn for a number of minutes, watching
//! the daemons' memory and file descriptors. `scripts/soak MINUTES` builds
//! and runs it as root; CI runs it for 2 minutes.
//!
//! All at once, until the time is up:
//! - TCP, both ways between the pods: back-to-back transfers of 16 MiB, each
//!   on a new connection, paced to `--tcp-mbit` (default 50 Mbit/s each
//!   way); the receiver checks every byte (numbered 64 KiB records of
//!   pseudo-random bytes: a lost, repeated, reordered or changed byte is
//!   found where it happens), and the sha256 of what it received must
//!   equal the sha256 of what the sender sent (each side pipes its bytes
//!   through `sha256sum`);
//! - UDP from one pod to the other at a steady rate, every datagram
//!   numbered and checked, one in eight longer than the tunnel MTU (the pod
//!   fragments it, the fragments cross the tunnel);
//! - pings both ways, in rounds of 500 at 10 ms intervals;
//! - route churn over the control socket on both daemons, 20 changes a
//!   second of other prefixes (`tunl route add`, `del`, and a `replace` of
//!   the whole set that keeps the pod routes), a `tunl status` now and then;
//! - kernel route churn on both nodes: `ip route replace`/`del` of other
//!   prefixes on tunl0, 10 a second;
//! - every daemon's RSS, threads and open FDs sampled from /proc.
//!
//! It fails when:
//! - a transfer breaks, a byte differs or the two sha256s of a transfer
//!   differ; a datagram is corrupt or arrives twice;
//! - loss: tunl drops a packet (any pipeline drop counter moves), or pings
//!   on the pod routes (which the churn never touches) and UDP datagrams
//!   are lost beyond what the queues' drop counters account for (see
//!   below);
//! - a route change or `status` is refused, or a daemon exits;
//! - memory grows: after the first quarter (warm-up: buffers, allocator
//!   arenas, the route table at its working size), the median RSS of the
//!   last quarter may exceed that of the second quarter by at most
//!   `RSS_GROWTH_PERCENT` plus `RSS_GROWTH_SLACK_KB`;
//! - file descriptors leak: once the load stops, every daemon must be back
//!   to the FDs it had before the load (within 10 s).
//!
//! The load is paced below what the daemons carry, on purpose: unpaced TCP
//! fills the TUN device's queue until it drops (that is how TCP finds the
//! rate), and a ping lost to a full queue would say nothing about tunl. So
//! lost pings and datagrams are a failure unless the packets the queues
//! dropped (tunl's I/O loss counters, every link's dropped counters, UDP
//! and raw socket buffer drops and IP reassembly failures, in every
//! namespace) are at least as many: then the machine was too busy for the
//! load, which the summary says as a warning. The summary prints those
//! counters.
//!
//! `soak --minutes M [--tunl PATH] [--tcp-mbit N]`; the `tunl` binary
//! defaults to the one next to this example's folder (`target/debug/tunl`).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use tunl::control::{Client, Request, Stats};
use tunl_lab::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl_lab::topology::ClusterSpec;

/// Bytes per checked TCP record (an 8-byte number, then pseudo-random bytes).
const RECORD: usize = 64 * 1024;
/// Records per TCP transfer (16 MiB).
const RECORDS_PER_TRANSFER: u64 = 256;
/// TCP rate per direction by default, Mbit/s: well below what two debug
/// daemons carry on a small machine (about 150 each way here), so that the
/// TUN queue never overflows and a lost ping is tunl's doing.
const TCP_MBIT: u64 = 50;
/// UDP datagrams per second (about 20 Mbit/s).
const UDP_RATE: u64 = 2000;
/// Payload of an ordinary datagram, and of every eighth (fragmented) one.
const UDP_LEN: [usize; 2] = [1200, 3000];
/// Pings per second each way.
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Route changes over the control socket per node: one per this.
const SOCKET_CHURN_EVERY: Duration = Duration::from_millis(50);
/// Socket routes kept at a time per node (older ones are deleted).
const SOCKET_WINDOW: usize = 40;
/// Kernel route changes per node: one per this.
const KERNEL_CHURN_EVERY: Duration = Duration::from_millis(100);
/// Kernel routes kept at a time per node.
const KERNEL_WINDOW: usize = 20;
/// Allowed RSS growth from the second quarter to the last, in percent...
const RSS_GROWTH_PERCENT: u64 = 5;
/// ...plus this many KiB (allocator noise on a small heap).
const RSS_GROWTH_SLACK_KB: u64 = 1024;
/// How long the FDs may take to come back to the baseline after the load.
const FD_SETTLE: Duration = Duration::from_secs(10);

/// What every load thread adds to, and the failures.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    tcp_bytes: AtomicU64,
    transfers: AtomicU64,
    udp_sent: AtomicU64,
    udp_received: AtomicU64,
    udp_corrupt: AtomicU64,
    udp_duplicate: AtomicU64,
    udp_bytes: AtomicU64,
    socket_changes: AtomicU64,
    kernel_changes: AtomicU64,
    /// The sha256 of each transfer as its receiver computed it, by
    /// (direction, transfer), for the sender to compare with its own.
    received_sha256: Mutex<HashMap<(u64, u64), String>>,
    /// Transfers whose two sha256s were compared and equal.
    sha256_equal: AtomicU64,
}

impl Shared {
    fn fail(&self, what: String) {
        eprintln!("soak: FAIL: {what}");
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
        self.stop.store(true, Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

/// One `/proc` sample of a daemon.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the load started.
    at: f64,
    rss_kb: u64,
    fds: usize,
    threads: u64,
}

fn sample(pid: u32, at: f64) -> std::io::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok(Sample {
        at,
        rss_kb: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    })
}

/// The sha256 of a stream of bytes, from a `sha256sum` child fed through a
/// pipe (no hashing crate in the workspace for the soak alone).
struct Sha256Sum {
    child: std::process::Child,
}

impl Sha256Sum {
    fn new() -> Result<Self, String> {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("sha256sum: {e}"))?;
        Ok(Sha256Sum { child })
    }

    fn update(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.child
            .stdin
            .as_mut()
            .ok_or("sha256sum: stdin closed")?
            .write_all(bytes)
            .map_err(|e| format!("sha256sum: {e}"))
    }

    /// The digest in hex.
    fn finish(mut self) -> Result<String, String> {
        drop(self.child.stdin.take());
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| format!("sha256sum: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.split_whitespace().next() {
            Some(d) if out.status.success() && d.len() == 64 => Ok(d.to_owned()),
            _ => Err(format!("sha256sum: {}: {text:?}", out.status)),
        }
    }
}

/// 64 KiB of pseudo-random bytes (xorshift64), the same every run.
fn random_block() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..RECORD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Message `id`: its number, then the block from a place `id` chooses
/// (wrapping), filling `out`.
fn message(id: u64, block: &[u8], out: &mut [u8]) {
    out[..8].copy_from_slice(&id.to_le_bytes());
    let body = &mut out[8..];
    let start = (id.wrapping_mul(0x9E37_79B9) % block.len() as u64) as usize;
    let mut at = 0;
    while at < body.len() {
        let from = (start + at) % block.len();
        let n = (block.len() - from).min(body.len() - at);
        body[at..at + n].copy_from_slice(&block[from..from + n]);
        at += n;
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0)
}

/// The number of TCP record `k` of `transfer` in direction `dir`.
fn record_id(dir: u64, transfer: u64, k: u64) -> u64 {
    dir << 56 | transfer << 24 | k
}

/// Receives one transfer and checks every byte; records the sha256 of what
/// it received for the sender (before closing, which the sender waits for);
/// returns the bytes.
fn check_transfer(
    mut s: TcpStream,
    dir: u64,
    transfer: u64,
    block: &[u8],
    shared: &Shared,
) -> Result<u64, String> {
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let (mut got, mut want) = (vec![0u8; RECORD], vec![0u8; RECORD]);
    let mut sha = Sha256Sum::new()?;
    for k in 0..RECORDS_PER_TRANSFER {
        s.read_exact(&mut got)
            .map_err(|e| format!("after {k} records: {e}"))?;
        sha.update(&got)?;
        message(record_id(dir, transfer, k), block, &mut want);
        if got != want {
            let i = first_difference(&got, &want);
            return Err(format!("record {k}: byte {i} differs"));
        }
    }
    let mut rest = [0u8; 1];
    match s.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err("bytes past the end".to_owned()),
        Err(e) => return Err(format!("at the end: {e}")),
    }
    let digest = sha.finish()?;
    shared
        .received_sha256
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((dir, transfer), digest);
    Ok(RECORDS_PER_TRANSFER * RECORD as u64)
}

/// Holds a sender to a rate: bytes so far against the time so far.
struct Pacer {
    start: Instant,
    bytes: u64,
    /// Bytes per second; 0: no limit.
    rate: u64,
}

impl Pacer {
    fn new(mbit: u64) -> Self {
        Pacer {
            start: Instant::now(),
            bytes: 0,
            rate: mbit * 1_000_000 / 8,
        }
    }

    /// Counts `n` bytes about to be sent, sleeping first if ahead of the rate.
    fn pace(&mut self, n: usize) {
        if self.rate > 0 {
            let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
            if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
                thread::sleep(ahead);
            }
        }
        self.bytes += n as u64;
    }
}

/// Sends one transfer, then compares the sha256 of what it sent with the
/// receiver's of what it received.
fn send_transfer(
    to: SocketAddrV4,
    (dir, transfer): (u64, u64),
    block: &[u8],
    pacer: &mut Pacer,
    shared: &Shared,
) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; RECORD];
    let mut sha = Sha256Sum::new()?;
    for k in 0..RECORDS_PER_TRANSFER {
        message(record_id(dir, transfer, k), block, &mut buf);
        pacer.pace(buf.len());
        s.write_all(&buf).map_err(|e| format!("record {k}: {e}"))?;
        sha.update(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let sent = sha.finish()?;
    // Wait for the receiver to close: it has checked everything and
    // recorded its sha256 by then.
    let mut rest = [0u8; 1];
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.read(&mut rest);
    let received = shared
        .received_sha256
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(dir, transfer));
    match received {
        Some(r) if r == sent => {
            shared.sha256_equal.fetch_add(1, Relaxed);
            Ok(())
        }
        Some(r) => Err(format!("sha256 differs: sent {sent}, received {r}")),
        None => Err("the receiver recorded no sha256".to_owned()),
    }
}

/// TCP transfers from `from_pod` to `to_pod` until the stop, both ends in
/// their pods' namespaces.
fn tcp(
    tc: &TunlCluster,
    shared: &Shared,
    block: &[u8],
    (from_pod, to_pod): (&str, &str),
    dir: u64,
    mbit: u64,
) {
    let what = format!("TCP {from_pod} -> {to_pod}");
    let to = SocketAddrV4::new(tc.pod_ip(to_pod).expect("pod"), 5300 + dir as u16);
    let netns = |pod: &str| tc.cluster().netns(pod).expect("pod netns").to_owned();
    let (server_ns, client_ns) = (netns(to_pod), netns(from_pod));
    let client_done = AtomicBool::new(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            let served = in_netns(&server_ns, || {
                let listener = TcpListener::bind(to).map_err(|e| format!("bind {to}: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                let _ = ready_tx.send(());
                let mut transfer = 0;
                loop {
                    // Read before accept: once the client is done, every
                    // connection it made is already in the queue.
                    let done = client_done.load(Relaxed);
                    match listener.accept() {
                        Ok((conn, _)) => {
                            match check_transfer(conn, dir, transfer, block, shared) {
                                Ok(n) => {
                                    shared.tcp_bytes.fetch_add(n, Relaxed);
                                    shared.transfers.fetch_add(1, Relaxed);
                                }
                                Err(e) => return Err(format!("transfer {transfer}: {e}")),
                            }
                            transfer += 1;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if done {
                                return Ok(());
                            }
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => return Err(format!("accept: {e}")),
                    }
                }
            });
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => shared.fail(format!("{what}: {e}")),
                Err(e) => shared.fail(format!("{what}: entering {server_ns}: {e}")),
            }
        });
        let sent = in_netns(&client_ns, move || {
            if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return Err("the receiver never listened".to_owned());
            }
            let mut transfer = 0;
            let mut pacer = Pacer::new(mbit);
            while !shared.stopped() {
                send_transfer(to, (dir, transfer), block, &mut pacer, shared)
                    .map_err(|e| format!("transfer {transfer}: {e}"))?;
                transfer += 1;
            }
            Ok(())
        });
        client_done.store(true, Relaxed);
        match sent {
            Ok(Ok(())) => {}
            // A failure elsewhere may have stopped the receiver first.
            Ok(Err(_)) if shared.stopped() => {}
            Ok(Err(e)) => shared.fail(format!("{what}: {e}")),
            Err(e) => shared.fail(format!("{what}: entering {client_ns}: {e}")),
        }
    });
}

/// Payload length of datagram `seq`.
fn udp_len(seq: u64) -> usize {
    UDP_LEN[usize::from(seq % 8 == 7)]
}

/// UDP at [`UDP_RATE`] from `from_pod` to `to_pod`, every datagram checked.
fn udp(tc: &TunlCluster, shared: &Shared, block: &[u8], from_pod: &str, to_pod: &str) {
    let to = SocketAddrV4::new(tc.pod_ip(to_pod).expect("pod"), 5400);
    let netns = |pod: &str| tc.cluster().netns(pod).expect("pod netns").to_owned();
    let (server_ns, client_ns) = (netns(to_pod), netns(from_pod));
    let sender_done = AtomicBool::new(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            let r = in_netns(&server_ns, || -> std::io::Result<()> {
                let sock = UdpSocket::bind(to)?;
                sock.set_read_timeout(Some(Duration::from_millis(100)))?;
                let _ = ready_tx.send(());
                let (mut got, mut want) = (vec![0u8; 65536], vec![0u8; 65536]);
                let mut seen: Vec<u64> = Vec::new();
                let mut idle_since: Option<Instant> = None;
                loop {
                    match sock.recv(&mut got) {
                        Ok(n) => {
                            idle_since = None;
                            let Some(seq) = got
                                .get(..8)
                                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                            else {
                                shared.udp_corrupt.fetch_add(1, Relaxed);
                                shared.fail(format!("UDP: a datagram of {n} bytes"));
                                continue;
                            };
                            let len = udp_len(seq);
                            message(seq, block, &mut want[..len]);
                            if n != len || got[..n] != want[..len] {
                                shared.udp_corrupt.fetch_add(1, Relaxed);
                                shared.fail(format!(
                                    "UDP: datagram {seq} corrupt ({n} bytes, byte {} differs)",
                                    first_difference(&got[..n], &want[..len])
                                ));
                                continue;
                            }
                            let (word, bit) = ((seq / 64) as usize, seq % 64);
                            if seen.len() <= word {
                                seen.resize(word + 1, 0);
                            }
                            if seen[word] & (1 << bit) != 0 {
                                shared.udp_duplicate.fetch_add(1, Relaxed);
                                shared.fail(format!("UDP: datagram {seq} arrived twice"));
                            }
                            seen[word] |= 1 << bit;
                            shared.udp_received.fetch_add(1, Relaxed);
                            shared.udp_bytes.fetch_add(n as u64, Relaxed);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            // After the sender stops, wait a second for
                            // stragglers.
                            if sender_done.load(Relaxed) {
                                let since = *idle_since.get_or_insert_with(Instant::now);
                                if since.elapsed() > Duration::from_secs(1) {
                                    return Ok(());
                                }
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => shared.fail(format!("UDP receiver: {e}")),
                Err(e) => shared.fail(format!("UDP: entering {server_ns}: {e}")),
            }
        });
        let r = in_netns(&client_ns, move || -> std::io::Result<()> {
            if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return Err(std::io::Error::other("the receiver never bound"));
            }
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(to)?;
            let mut buf = vec![0u8; UDP_LEN[1]];
            let start = Instant::now();
            let mut seq = 0;
            while !shared.stopped() {
                // Catch up to the rate, then sleep a little.
                let due = (start.elapsed().as_secs_f64() * UDP_RATE as f64) as u64;
                while seq < due {
                    let len = udp_len(seq);
                    message(seq, block, &mut buf[..len]);
                    // A full queue (ENOBUFS) is loss like any other.
                    if sock.send(&buf[..len]).is_ok() {
                        shared.udp_sent.fetch_add(1, Relaxed);
                    }
                    seq += 1;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        sender_done.store(true, Relaxed);
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.fail(format!("UDP sender: {e}")),
            Err(e) => shared.fail(format!("UDP: entering {client_ns}: {e}")),
        }
    });
}

/// What the pings of one direction saw.
#[derive(Debug, Default, Clone)]
struct Pings {
    sent: u64,
    received: u64,
    /// ICMP errors instead of replies (`From ... Destination Net
    /// Unreachable`): a route was missing.
    errors: u64,
    first_error: Option<String>,
}

impl Pings {
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

/// The requests `1..=count` that got a reply, from ping's reply lines
/// (`... icmp_seq=N ttl=...`), and whether ping printed its summary.
fn ping_replies(out: &str, count: u64) -> (u64, bool) {
    let mut seen = std::collections::HashSet::new();
    for l in out.lines().filter(|l| l.contains(" bytes from ")) {
        let seq = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = seq.filter(|n| (1..=count).contains(n)) {
            seen.insert(n);
        }
    }
    let summary = out.lines().any(|l| l.contains("packets transmitted"));
    (seen.len() as u64, summary)
}

/// Pings `to_pod` from `from_pod` until the stop, in rounds of 5 s.
///
/// A round is `count` requests; a request is lost when no reply to it came
/// within the round's deadline (`-w`, 5 s past its last request). With a
/// deadline, ping goes on sending until it has `count` replies, and exits
/// with the last requests still in flight: those extra requests are not
/// counted, only replies to requests `1..=count` are. (Without a deadline,
/// ping gives up on the last request after twice the longest round trip
/// it has seen, and counts a reply a busy machine delayed as a loss.)
fn ping(tc: &TunlCluster, shared: &Shared, from_pod: &str, to_pod: &str) -> Pings {
    let to = tc.pod_ip(to_pod).expect("pod").to_string();
    let round = Duration::from_secs(5);
    let count = (round.as_millis() / PING_INTERVAL.as_millis()) as u64;
    let count_arg = count.to_string();
    let interval = format!("{:.3}", PING_INTERVAL.as_secs_f64());
    let deadline = (round.as_secs() + 5).to_string();
    let netns = tc.cluster().netns(from_pod).expect("pod netns").to_owned();
    let args = [
        "ping", "-n", "-c", &count_arg, "-i", &interval, "-w", &deadline, &to,
    ];
    let mut p = Pings::default();
    while !shared.stopped() {
        let out = match tc.cluster().exec(&netns, &args) {
            Ok(out) => out,
            Err(e) => {
                shared.fail(format!("ping {from_pod} -> {to_pod}: {e}"));
                break;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        // ping exits 1 when replies were missing, 2 on other errors.
        let (received, summary) = ping_replies(&text, count);
        if !summary || !matches!(out.status.code(), Some(0 | 1)) {
            shared.fail(format!(
                "ping {from_pod} -> {to_pod}: {}: {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
            break;
        }
        p.sent += count;
        p.received += received;
        for l in text.lines().filter(|l| l.starts_with("From ")) {
            p.errors += 1;
            p.first_error.get_or_insert_with(|| l.to_owned());
        }
    }
    p
}

/// Runs the `tunl` CLI against a daemon's control socket; `input` goes to
/// its stdin.
fn tunl_cli(tunl: &Path, socket: &Path, args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new(tunl);
    cmd.args(args)
        .arg("--socket")
        .arg(socket)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("tunl {args:?}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("tunl {args:?}: stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("tunl {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tunl {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Route churn over the control socket of `node`: adds of `10.{second}.X.0/24`
/// via the other node, deletes of the oldest, a replace of the whole set now
/// and then (the pod routes stay), a `status`.
fn socket_churn(tc: &TunlCluster, shared: &Shared, tunl: &Path, node: &str, second: u8) {
    let socket = tc.control_socket(node);
    let pod_routes = tc.cluster().remote_routes(node);
    let via = pod_routes[0].1.to_string();
    let call = |args: &[&str], input: Option<&str>| {
        let r = tunl_cli(tunl, &socket, args, input);
        if r.is_ok() {
            shared.socket_changes.fetch_add(1, Relaxed);
        }
        r
    };
    let mut window: VecDeque<String> = VecDeque::new();
    let mut i: u32 = 0;
    while !shared.stopped() {
        let prefix = format!("10.{second}.{}.0/24", i % 250);
        let mut result = if window.contains(&prefix) {
            Ok(())
        } else {
            window.push_back(prefix.clone());
            call(&["route", "add", &prefix, "via", &via], None)
        };
        if result.is_ok() && window.len() > SOCKET_WINDOW {
            let old = window.pop_front().expect("not empty");
            result = call(&["route", "del", &old], None);
        }
        if result.is_ok() && i % 20 == 19 {
            let mut file = String::new();
            for (p, v) in &pod_routes {
                file.push_str(&format!("{p} via {v}\n"));
            }
            for p in &window {
                file.push_str(&format!("{p} via {via}\n"));
            }
            result = call(&["route", "replace", "--file", "-"], Some(&file));
        }
        if result.is_ok() && i % 50 == 49 {
            result = call(&["status"], None);
        }
        if let Err(e) = result {
            shared.fail(format!("control socket of {node}: {e}"));
            return;
        }
        i += 1;
        thread::sleep(SOCKET_CHURN_EVERY);
    }
}

/// Kernel route churn on `node`: `ip route replace 10.{second}.X.0/24 via
/// NODE dev tunl0 onlink` and deletes of the oldest.
fn kernel_churn(tc: &TunlCluster, shared: &Shared, node: &str, second: u8) {
    let via = tc.cluster().remote_routes(node)[0].1.to_string();
    let mut window: VecDeque<String> = VecDeque::new();
    let mut i: u32 = 0;
    while !shared.stopped() {
        let prefix = format!("10.{second}.{}.0/24", i % 250);
        let add = [
            "ip", "route", "replace", &prefix, "via", &via, "dev", "tunl0", "onlink",
        ];
        let mut result = tc.cluster().exec_ok(node, &add).map(|_| ());
        if !window.contains(&prefix) {
            window.push_back(prefix.clone());
        }
        if result.is_ok() && window.len() > KERNEL_WINDOW {
            let old = window.pop_front().expect("not empty");
            result = tc
                .cluster()
                .exec_ok(node, &["ip", "route", "del", &old, "dev", "tunl0"])
                .map(|_| ());
        }
        if let Err(e) = result {
            shared.fail(format!("kernel routes on {node}: {e}"));
            return;
        }
        shared.kernel_changes.fetch_add(1, Relaxed);
        i += 1;
        thread::sleep(KERNEL_CHURN_EVERY);
    }
}

/// Counters of tunl's that count packets lost to a full queue or buffer
/// (I/O), not refused by the pipeline.
const IO_LOSSES: &[&str] = &[
    "rx_tun_down",
    "tx_errors",
    "tx_buffer_full",
    "rx_tun_full",
    "rx_truncated",
    "rx_oversize",
    "tun_split_errors",
];

/// `name=value` of the non-zero ones, or `none`.
fn nonzero(counters: &[(String, u64)]) -> String {
    let v: Vec<String> = counters
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(" ")
    }
}

/// The kernel's drop counters in the namespace of `name` (a node or a pod):
/// each link's (`ip -s link`, e.g. `tunl0 tx_dropped`: the TUN queue was
/// full), UDP's socket buffer errors, IP reassembly failures, and the drops
/// of raw sockets (tunl's underlay sockets, in a node).
fn kernel_drops(tc: &TunlCluster, name: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    if let Ok(out) = tc
        .cluster()
        .exec_ok(name, &["ip", "-j", "-s", "link", "show"])
    {
        let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        for l in &links {
            for dir in ["rx", "tx"] {
                let n = l["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
                let link = l["ifname"].as_str().unwrap_or("?");
                found.push((format!("{link} {dir}_dropped"), n));
            }
        }
    }
    if let Ok(snmp) = tc.cluster().exec_ok(name, &["cat", "/proc/net/snmp"]) {
        for (section, wanted) in [
            ("Udp:", &["RcvbufErrors", "SndbufErrors"][..]),
            ("Ip:", &["ReasmFails"][..]),
        ] {
            let rows: Vec<&str> = snmp.lines().filter(|l| l.starts_with(section)).collect();
            if let [names, values] = rows[..] {
                for (k, v) in names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .skip(1)
                {
                    if wanted.contains(&k) {
                        let what = section.trim_end_matches(':').to_lowercase();
                        found.push((format!("{what} {k}"), v.parse().unwrap_or(0)));
                    }
                }
            }
        }
    }
    // The last column of /proc/net/raw is the socket's drops.
    if let Ok(raw) = tc.cluster().exec_ok(name, &["cat", "/proc/net/raw"]) {
        let drops: u64 = raw
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        found.push(("raw socket drops".to_owned(), drops));
    }
    found
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// RSS medians of the second and the last quarter of the load.
fn quarters(samples: &[Sample], secs: f64) -> (u64, u64) {
    let within = |lo: f64, hi: f64| {
        samples
            .iter()
            .filter(|s| s.at >= lo * secs && s.at < hi * secs)
            .map(|s| s.rss_kb)
            .collect::<Vec<_>>()
    };
    (median(within(0.25, 0.5)), median(within(0.75, 1.01)))
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

struct Args {
    minutes: f64,
    tunl: PathBuf,
    tcp_mbit: u64,
}

fn args() -> Result<Args, String> {
    let mut minutes = None;
    let mut tunl = None;
    let mut tcp_mbit = TCP_MBIT;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().and_then(|m| m.parse::<f64>().ok()),
            "--tunl" => tunl = it.next().map(PathBuf::from),
            "--tcp-mbit" => {
                tcp_mbit = it
                    .next()
                    .and_then(|m| m.parse().ok())
                    .ok_or("--tcp-mbit N: a whole number (0: unpaced)")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let minutes = minutes
        .filter(|m| *m > 0.0)
        .ok_or("--minutes M (more than 0) is required")?;
    let tunl = match tunl {
        Some(t) => t,
        // Examples live in target/<profile>/examples/, the binary one up.
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("tunl"))
            .ok_or("no --tunl and no folder above this example")?,
    };
    if !tunl.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build -p tunl-cli)",
            tunl.display()
        ));
    }
    Ok(Args {
        minutes,
        tunl,
        tcp_mbit,
    })
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}\nusage: soak --minutes M [--tunl PATH] [--tcp-mbit N]");
            return ExitCode::from(2);
        }
    };
    match soak(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn soak(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let tc = TunlCluster::start(ClusterSpec::seed(), &args.tunl, DaemonOptions::default())?;
    let pods: Vec<String> = tc.cluster().pods().map(|p| p.name.clone()).collect();
    let (a, b) = (pods[0].as_str(), pods[1].as_str());
    let (ip_a, ip_b) = (tc.pod_ip(a)?, tc.pod_ip(b)?);
    tc.cluster()
        .wait_reachable(a, ip_b, Duration::from_secs(10))?;
    tc.cluster()
        .wait_reachable(b, ip_a, Duration::from_secs(10))?;
    let daemons: Vec<(String, u32)> = tc
        .daemons()
        .iter()
        .map(|d| (d.node.clone(), d.pid))
        .collect();
    let nodes: Vec<&str> = daemons.iter().map(|(n, _)| n.as_str()).collect();
    thread::sleep(Duration::from_secs(1));
    let baseline: Vec<Sample> = daemons
        .iter()
        .map(|(_, pid)| sample(*pid, 0.0))
        .collect::<Result<_, _>>()?;
    let kernel_before: Vec<Vec<(String, u64)>> = nodes
        .iter()
        .copied()
        .chain([a, b])
        .map(|name| kernel_drops(&tc, name))
        .collect();
    println!(
        "soak: {:.1} min in the seed cluster ({} -> {}, {} -> {}), tunl {}; \
         configs, logs and control sockets in {}",
        args.minutes,
        a,
        ip_b,
        b,
        ip_a,
        args.tunl.display(),
        tc.dir().display()
    );

    let shared = Shared::default();
    let block = random_block();
    let interval = (duration / 120).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); daemons.len()];
    let start = Instant::now();
    let mut load_secs = 0.0;
    let (mut pings_ab, mut pings_ba) = (Pings::default(), Pings::default());
    thread::scope(|s| {
        s.spawn(|| tcp(&tc, &shared, &block, (a, b), 0, args.tcp_mbit));
        s.spawn(|| tcp(&tc, &shared, &block, (b, a), 1, args.tcp_mbit));
        s.spawn(|| udp(&tc, &shared, &block, a, b));
        let ab = s.spawn(|| ping(&tc, &shared, a, b));
        let ba = s.spawn(|| ping(&tc, &shared, b, a));
        for (i, node) in nodes.iter().enumerate() {
            let (tc, shared) = (&tc, &shared);
            s.spawn(move || socket_churn(tc, shared, &args.tunl, node, 99 - i as u8));
            s.spawn(move || kernel_churn(tc, shared, node, 89 - i as u8));
        }
        // Sample until the time is up (or a failure stops the load).
        while start.elapsed() < duration && !shared.stopped() {
            thread::sleep(interval.min(duration.saturating_sub(start.elapsed())));
            let at = start.elapsed().as_secs_f64();
            for (i, (node, pid)) in daemons.iter().enumerate() {
                match sample(*pid, at) {
                    Ok(x) => samples[i].push(x),
                    Err(e) => shared.fail(format!("daemon on {node} (pid {pid}): {e}")),
                }
            }
        }
        shared.stop.store(true, Relaxed);
        load_secs = start.elapsed().as_secs_f64();
        pings_ab = ab.join().unwrap_or_default();
        pings_ba = ba.join().unwrap_or_default();
    });

    // Every daemon still runs, and is back to the FDs it had before.
    let mut end: Vec<Option<Sample>> = vec![None; daemons.len()];
    let settle = Instant::now();
    for (i, (node, pid)) in daemons.iter().enumerate() {
        if let Some(status) = tc.cluster().try_wait(*pid)? {
            shared.fail(format!(
                "the daemon on {node} exited ({status}):\n{}",
                tc.log(node)
            ));
            continue;
        }
        loop {
            let x = sample(*pid, start.elapsed().as_secs_f64())?;
            end[i] = Some(x);
            if x.fds <= baseline[i].fds || settle.elapsed() > FD_SETTLE {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let x = end[i].expect("sampled");
        if x.fds != baseline[i].fds {
            shared.fail(format!(
                "the daemon on {node} holds {} FDs after the load, {} before",
                x.fds, baseline[i].fds
            ));
        }
    }

    // Memory: the last quarter against the second.
    let mut rss_rows = Vec::new();
    for (i, (node, _)) in daemons.iter().enumerate() {
        let (q2, q4) = quarters(&samples[i], load_secs);
        let limit = q2 + q2 * RSS_GROWTH_PERCENT / 100 + RSS_GROWTH_SLACK_KB;
        if q2 > 0 && q4 > limit {
            shared.fail(format!(
                "the daemon on {node} grew: median RSS {q4} KiB in the last quarter, \
                 {q2} KiB in the second (limit {limit} KiB)"
            ));
        }
        rss_rows.push((q2, q4));
    }

    // Loss. Every packet the soak sends is one tunl must carry: any
    // pipeline drop (no route, unknown source, ...) fails, and so does an
    // ICMP error instead of a ping reply. A lost ping fails too, unless
    // queues overflowed (the kernel's TUN queue, tunl's I/O losses) at
    // least as often: then the machine was too busy for the load, which
    // the summary says, and those pings say nothing about tunl.
    let stats: Vec<Option<Stats>> = daemons
        .iter()
        .map(|(node, _)| {
            Client::connect(&tc.control_socket(node))
                .and_then(|mut c| c.call(&Request::Stats {}))
                .map_err(|e| shared.fail(format!("stats of the daemon on {node}: {e}")))
                .ok()
        })
        .collect();
    let kernel: Vec<Vec<(String, u64)>> = nodes
        .iter()
        .copied()
        .chain([a, b])
        .map(|name| kernel_drops(&tc, name))
        .collect();
    // What the kernel dropped during the load: the counters now less those
    // before it.
    let kernel: Vec<Vec<(String, u64)>> = kernel
        .into_iter()
        .zip(&kernel_before)
        .map(|(now, before)| {
            now.into_iter()
                .map(|(k, v)| {
                    let was = before.iter().find(|(b, _)| *b == k).map_or(0, |(_, n)| *n);
                    (k, v.saturating_sub(was))
                })
                .collect()
        })
        .collect();
    let mut overflows: u64 = kernel.iter().flatten().map(|(_, v)| v).sum();
    for (i, (node, _)) in daemons.iter().enumerate() {
        let Some(st) = &stats[i] else { continue };
        if st.drops_total > 0 {
            shared.fail(format!(
                "the daemon on {node} dropped packets: {}",
                nonzero(&st.drops)
            ));
        }
        overflows += st
            .counters
            .iter()
            .filter(|(n, _)| IO_LOSSES.contains(&n.as_str()))
            .map(|(_, v)| v)
            .sum::<u64>();
    }
    let (udp_sent, udp_received) = (
        shared.udp_sent.load(Relaxed),
        shared.udp_received.load(Relaxed),
    );
    let udp_lost = udp_sent.saturating_sub(udp_received);
    let mut congested = false;
    let total_lost = pings_ab.lost() + pings_ba.lost() + udp_lost;
    if udp_lost > 0 && total_lost > overflows {
        shared.fail(format!(
            "UDP: {udp_lost} of {udp_sent} datagrams lost, and {} pings: more than the \
             {overflows} packets the queues dropped",
            pings_ab.lost() + pings_ba.lost()
        ));
    } else if udp_lost > 0 {
        congested = true;
    }
    for (what, p) in [
        (format!("{a} -> {b}"), &pings_ab),
        (format!("{b} -> {a}"), &pings_ba),
    ] {
        if p.sent == 0 {
            shared.fail(format!("ping {what}: none sent"));
        }
        if let Some(e) = &p.first_error {
            shared.fail(format!(
                "ping {what}: {} ICMP errors instead of replies, the first: {e}",
                p.errors
            ));
        }
        if p.lost() > 0 && total_lost > overflows {
            shared.fail(format!(
                "ping {what} on an unchanged route: {} of {} lost, and {udp_lost} datagrams: \
                 more than the {overflows} packets the queues dropped",
                p.lost(),
                p.sent
            ));
        } else if p.lost() > 0 {
            congested = true;
        }
    }
    let transfers = shared.transfers.load(Relaxed);
    if transfers == 0 {
        shared.fail("no TCP transfer completed".to_owned());
    }
    let sha256_equal = shared.sha256_equal.load(Relaxed);
    if sha256_equal == 0 {
        shared.fail("no TCP transfer had its sha256s compared".to_owned());
    }
    if udp_received == 0 {
        shared.fail("no UDP datagram arrived".to_owned());
    }

    // The summary.
    println!("\nsoak summary");
    println!("  duration        {:.0} s of load", load_secs);
    let udp_bytes = shared.udp_bytes.load(Relaxed);
    println!(
        "  tcp             {:.1} MiB in {transfers} transfers of 16 MiB, every byte checked \
         ({} Mbit/s each way)",
        shared.tcp_bytes.load(Relaxed) as f64 / (1024.0 * 1024.0),
        if args.tcp_mbit == 0 {
            "unpaced".to_owned()
        } else {
            format!("paced at {}", args.tcp_mbit)
        }
    );
    println!(
        "  sha256          {sha256_equal} of {transfers} transfers compared: the sha256 of what \
         was received equals that of what was sent"
    );
    println!(
        "  udp             {udp_sent} sent, {udp_received} received ({:.3}% lost, {:.1} MiB), {} corrupt, {} duplicated",
        100.0 * udp_sent.saturating_sub(udp_received) as f64 / udp_sent.max(1) as f64,
        udp_bytes as f64 / (1024.0 * 1024.0),
        shared.udp_corrupt.load(Relaxed),
        shared.udp_duplicate.load(Relaxed)
    );
    for (what, p) in [
        (format!("{a} -> {b}"), &pings_ab),
        (format!("{b} -> {a}"), &pings_ba),
    ] {
        println!(
            "  ping            {what}: {} sent, {} lost, {} ICMP errors",
            p.sent,
            p.lost(),
            p.errors
        );
    }
    println!(
        "  route churn     {} tunl route add/del/replace and status calls, {} ip route changes on tunl0",
        shared.socket_changes.load(Relaxed),
        shared.kernel_changes.load(Relaxed)
    );
    println!(
        "\n  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>5} {:>5} {:>8} {:>9}",
        "daemon",
        "RSS start",
        "RSS q2",
        "RSS q4",
        "RSS end",
        "RSS max",
        "FDs",
        "end",
        "max",
        "threads",
        "log"
    );
    for (i, (node, _)) in daemons.iter().enumerate() {
        let max_rss = samples[i].iter().map(|x| x.rss_kb).max().unwrap_or(0);
        let max_fds = samples[i].iter().map(|x| x.fds).max().unwrap_or(0);
        let threads = samples[i].iter().map(|x| x.threads).max().unwrap_or(0);
        let log = tc.daemon(node).map(|d| d.log.clone())?;
        let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let e = end[i];
        println!(
            "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>5} {:>5} {:>8} {:>8}K",
            node,
            mib(baseline[i].rss_kb),
            mib(rss_rows[i].0),
            mib(rss_rows[i].1),
            e.map_or("-".to_owned(), |x| mib(x.rss_kb)),
            mib(max_rss),
            baseline[i].fds,
            e.map_or("-".to_owned(), |x| x.fds.to_string()),
            max_fds,
            threads,
            log_bytes / 1024
        );
    }
    println!(
        "  (RSS in MiB: at the start, medians of the second and last quarters, at the end, max;\n   \
         fails when RSS q4 > RSS q2 + {RSS_GROWTH_PERCENT}% + {RSS_GROWTH_SLACK_KB} KiB, or when FDs \
         are not back to the start's within {} s of the load's end)",
        FD_SETTLE.as_secs()
    );
    for (i, (node, _)) in daemons.iter().enumerate() {
        let (refused, io) = stats[i]
            .as_ref()
            .map_or(("?".to_owned(), "?".to_owned()), |st| {
                let io: Vec<(String, u64)> = st
                    .counters
                    .iter()
                    .filter(|(n, _)| IO_LOSSES.contains(&n.as_str()))
                    .cloned()
                    .collect();
                (nonzero(&st.drops), nonzero(&io))
            });
        println!("  tunl on {node}: drops {refused}; I/O losses {io}");
    }
    for (name, k) in nodes.iter().copied().chain([a, b]).zip(&kernel) {
        println!("  kernel drops in {name} during the load: {}", nonzero(k));
    }
    if congested {
        println!(
            "  WARNING: pings or datagrams were lost while queues overflowed ({overflows} packets): this \
             machine was too busy for the load (lower --tcp-mbit); not counted as a failure"
        );
    }
    let failures = shared
        .failures
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    if failures.is_empty() {
        println!("\nsoak: ok");
        Ok(true)
    } else {
        println!("\nsoak: FAILED");
        for f in &failures {
            println!("  - {f}");
        }
        for (node, _) in &daemons {
            let log = tc.log(node);
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            println!("--- last lines of the log of {node} ---");
            for l in tail.iter().rev() {
                println!("{l}");
            }
        }
        Ok(false)
    }
}
