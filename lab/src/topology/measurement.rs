//! Measuring between pods: `ping` (loss, TTLs, round trips) and one-shot
//! `iperf3` TCP and UDP runs, with the parsers of their output.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::processes::Terminator;
use super::{Cluster, ProcessOutput, TopologyError};

/// How long an iperf3 server may take to start listening.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// Counter that spreads iperf3 ports so concurrent runs do not collide.
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// What `ping` reported.
#[derive(Debug, Clone, PartialEq)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// TTL of each reply, in order.
    pub ttls: Vec<u8>,
    /// Round-trip time of each reply, in milliseconds.
    pub rtts_ms: Vec<f64>,
    /// Everything ping printed.
    pub raw: String,
}

impl PingResult {
    /// Whether every request got a reply (and at least one was sent).
    pub fn all_replied(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }
}

/// What an `iperf3` TCP run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Goodput at the receiver, bits per second, all streams.
    pub bits_per_second: f64,
    /// TCP retransmissions at the sender, all streams.
    pub retransmits: u64,
    /// Bytes received, all streams.
    pub bytes: u64,
}

/// What an `iperf3` UDP run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpResult {
    /// Datagrams received per second.
    pub packets_per_second_received: f64,
    /// Percentage of datagrams lost.
    pub lost_percent: f64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagrams lost.
    pub packets_lost: u64,
    /// Bits per second received (payload).
    pub bits_per_second_received: f64,
}

impl Cluster {
    /// Pings `to` from a pod (`count` echo requests, `interval` apart, one
    /// second's wait for the last reply). Lost replies are not an error:
    /// look at [`PingResult::received`].
    pub fn ping(
        &self,
        from_pod: &str,
        to: Ipv4Addr,
        count: u32,
        interval: Duration,
    ) -> Result<PingResult, TopologyError> {
        let pod = self.pod_named(from_pod)?;
        let count = count.max(1).to_string();
        let interval = format!("{:.3}", interval.as_secs_f64().max(0.002));
        let to = to.to_string();
        let out = self.exec(
            &pod.netns,
            &["ping", "-n", "-c", &count, "-i", &interval, "-W", "1", &to],
        )?;
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        // ping exits 1 when replies were missing, 2 on other errors.
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(TopologyError::Command {
                command: format!("ping {to} in {}", pod.netns),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned() + &raw,
            });
        }
        parse_ping(raw)
    }

    /// Pings `to` from a pod, one request at a time, until a reply comes
    /// (e.g. while tunl daemons start); gives up with
    /// [`TopologyError::Timeout`] after `timeout`. Returns the ping that got
    /// the reply.
    pub fn wait_reachable(
        &self,
        from_pod: &str,
        to: Ipv4Addr,
        timeout: Duration,
    ) -> Result<PingResult, TopologyError> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.ping(from_pod, to, 1, Duration::from_millis(200))?;
            if result.received > 0 {
                return Ok(result);
            }
            if Instant::now() >= deadline {
                return Err(TopologyError::Timeout(format!(
                    "{to} to answer pings from {from_pod}: {}",
                    result.raw.trim()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One `iperf3` TCP run from `client_pod` to `server_pod`: `seconds`
    /// long, `streams` parallel streams. Starts a one-shot server in the
    /// server pod, waits until it listens, runs the client with `-J` and
    /// always ends the server.
    pub fn iperf3_tcp(
        &self,
        client_pod: &str,
        server_pod: &str,
        seconds: u32,
        streams: u32,
    ) -> Result<IperfResult, TopologyError> {
        let streams = streams.max(1).to_string();
        let json = self.iperf3(client_pod, server_pod, seconds, &["-P", &streams])?;
        let end = &json["end"];
        let received = &end["sum_received"];
        Ok(IperfResult {
            bits_per_second: json_f64(received, "bits_per_second")?,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            bytes: json_f64(received, "bytes")? as u64,
        })
    }

    /// One `iperf3` UDP run from `client_pod` to `server_pod`: `seconds`
    /// long, datagrams of `payload_len` bytes, at `target_bitrate` bits per
    /// second (0: as fast as possible).
    pub fn iperf3_udp(
        &self,
        client_pod: &str,
        server_pod: &str,
        seconds: u32,
        payload_len: u16,
        target_bitrate: u64,
    ) -> Result<UdpResult, TopologyError> {
        let len = payload_len.to_string();
        let rate = target_bitrate.to_string();
        let json = self.iperf3(
            client_pod,
            server_pod,
            seconds,
            &["-u", "-l", &len, "-b", &rate],
        )?;
        let end = &json["end"];
        let sum = if end["sum_received"].is_object() {
            &end["sum_received"]
        } else {
            &end["sum"]
        };
        let packets = json_f64(sum, "packets")? as u64;
        let lost = json_f64(sum, "lost_packets")?.max(0.0) as u64;
        let secs = json_f64(sum, "seconds")?;
        let received = packets.saturating_sub(lost) as f64;
        Ok(UdpResult {
            packets_per_second_received: if secs > 0.0 { received / secs } else { 0.0 },
            lost_percent: json_f64(sum, "lost_percent")?,
            packets_sent: packets,
            packets_lost: lost,
            bits_per_second_received: received * f64::from(payload_len) * 8.0 / secs.max(1e-9),
        })
    }

    /// The shared part of the iperf3 helpers: returns the client's JSON.
    fn iperf3(
        &self,
        client_pod: &str,
        server_pod: &str,
        seconds: u32,
        extra: &[&str],
    ) -> Result<serde_json::Value, TopologyError> {
        let client = self.pod_named(client_pod)?;
        let server = self.pod_named(server_pod)?;
        let port = (5201 + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 1000).to_string();
        let server_ip = server.ip.to_string();
        let pid = self.spawn(
            &server.netns,
            &["iperf3", "-s", "-1", "-B", &server_ip, "-p", &port],
            ProcessOutput::Null,
        )?;
        let _server = Terminator { cluster: self, pid };
        self.wait_listening(&server.netns, pid, &port)?;

        let secs = seconds.max(1).to_string();
        let mut args = vec!["iperf3", "-c", &server_ip, "-p", &port, "-t", &secs, "-J"];
        args.extend_from_slice(extra);
        let out = self.exec(&client.netns, &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value =
            serde_json::from_str(&stdout).map_err(|e| TopologyError::Parse {
                tool: "iperf3",
                detail: format!("{e}: {}", String::from_utf8_lossy(&out.stderr)),
            })?;
        if let Some(error) = json["error"].as_str() {
            return Err(TopologyError::Command {
                command: args.join(" "),
                status: out.status,
                stderr: error.to_owned(),
            });
        }
        Ok(json)
    }

    /// Waits until a TCP socket listens on `port` in `netns` (or the process
    /// `pid` exited, which is an error).
    fn wait_listening(&self, netns: &str, pid: u32, port: &str) -> Result<(), TopologyError> {
        let deadline = Instant::now() + LISTEN_WAIT;
        let filter = format!("sport = :{port}");
        loop {
            let out = self.exec_ok(netns, &["ss", "-Hltn", &filter])?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            if let Some(status) = self.try_wait(pid)? {
                return Err(TopologyError::Command {
                    command: format!("iperf3 -s -p {port} in {netns}"),
                    status,
                    stderr: "exited before listening".into(),
                });
            }
            if Instant::now() >= deadline {
                return Err(TopologyError::Timeout(format!(
                    "iperf3 to listen on port {port} in {netns}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn json_f64(value: &serde_json::Value, key: &str) -> Result<f64, TopologyError> {
    value[key].as_f64().ok_or_else(|| TopologyError::Parse {
        tool: "iperf3",
        detail: format!("no number {key:?} in {value}"),
    })
}

/// Parses ping's output: one `ttl=` and `time=` per reply line, then the
/// `N packets transmitted, M received` summary.
fn parse_ping(raw: String) -> Result<PingResult, TopologyError> {
    let mut ttls = Vec::new();
    let mut rtts_ms = Vec::new();
    let mut summary = None;
    for line in raw.lines() {
        if line.contains(" bytes from ") {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let (Some(ttl), Some(time)) = (field("ttl="), field("time=")) {
                let ttl = ttl.parse().ok();
                let time = time.parse().ok();
                if let (Some(ttl), Some(time)) = (ttl, time) {
                    ttls.push(ttl);
                    rtts_ms.push(time);
                }
            }
        } else if line.contains("packets transmitted") {
            let mut numbers = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
            summary = numbers.next().zip(numbers.next());
        }
    }
    let (transmitted, received) = summary.ok_or_else(|| TopologyError::Parse {
        tool: "ping",
        detail: format!("no summary line in {raw:?}"),
    })?;
    Ok(PingResult {
        transmitted,
        received,
        ttls,
        rtts_ms,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_output() {
        let raw = "PING 10.20.42.31 (10.20.42.31) 56(84) bytes of data.\n\
            64 bytes from 10.20.42.31: icmp_seq=1 ttl=62 time=5.60 ms\n\
            64 bytes from 10.20.42.31: icmp_seq=2 ttl=62 time=1.66 ms\n\
            \n--- 10.20.42.31 ping statistics ---\n\
            3 packets transmitted, 2 received, 33.3333% packet loss, time 6ms\n\
            rtt min/avg/max/mdev = 1.662/3.015/5.595/1.825 ms\n";
        let r = parse_ping(raw.to_owned()).unwrap();
        assert_eq!((r.transmitted, r.received), (3, 2));
        assert_eq!(r.ttls, vec![62, 62]);
        assert_eq!(r.rtts_ms, vec![5.60, 1.66]);
        assert!(!r.all_replied());
    }

    #[test]
    fn parses_ping_output_with_errors_and_no_replies() {
        let raw = "PING 10.9.9.9 (10.9.9.9) 56(84) bytes of data.\n\
            From 10.20.105.215 icmp_seq=1 Destination Host Unreachable\n\n\
            --- 10.9.9.9 ping statistics ---\n\
            2 packets transmitted, 0 received, +1 errors, 100% packet loss, time 1001ms\n";
        let r = parse_ping(raw.to_owned()).unwrap();
        assert_eq!((r.transmitted, r.received), (2, 0));
        assert!(r.ttls.is_empty());
        assert!(parse_ping("garbage".into()).is_err());
    }
}
