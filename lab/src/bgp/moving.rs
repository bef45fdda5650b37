//! A block move under traffic: the new owner announces [`MOVED_BLOCK`],
//! then the old owner withdraws it (make before break), while a pod on a
//! third node pings [`MOVED_ADDRESS`]. Captures on both owners' underlay
//! show when the echo requests stopped reaching the old owner and started
//! reaching the new one; ping counts what was lost.
//!
//! Make before break holds only if the announcement has reached every BIRD
//! that chooses between the two paths (the route reflectors, or in a mesh
//! every other node) before the withdrawal does: the two travel over
//! different sessions from different BIRDs, and on a loaded machine the
//! withdrawal can overtake the announcement (a node then has no route for
//! a few milliseconds and its kernel answers net unreachable). So the move
//! waits until those BIRDs list the new owner's path, as an operator
//! moving a block by hand would check, and only then withdraws.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{BgpCluster, BgpError, MOVED_ADDRESS, MOVED_BLOCK, config::MOVED_PROTOCOL};
use crate::capture::{self, CapturedPacket};
use crate::topology::{PingResult, TopologyError};

/// How a block move runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveOptions {
    /// Interval of the ping stream.
    pub interval: Duration,
    /// Pinging before the move.
    pub before: Duration,
    /// Pinging after the move.
    pub after: Duration,
    /// How long the announcement may take to reach the BIRDs that choose
    /// a path; past it the old owner withdraws anyway (break before make).
    pub propagation_timeout: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(2),
            before: Duration::from_secs(1),
            after: Duration::from_secs(2),
            propagation_timeout: Duration::from_secs(5),
        }
    }
}

/// What a block move showed. Times are in milliseconds from the
/// announcement (the moment before `enable moved` went to the new owner's
/// BIRD), negative before it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMove {
    /// The node that announced the block before.
    pub from: String,
    /// The node that announces it after.
    pub to: String,
    /// The pod that pinged [`MOVED_ADDRESS`].
    pub pinger: String,
    /// When every BIRD that chooses a path (the route reflectors, or in a
    /// mesh every other node) had the new owner's path; `None` if one did
    /// not within [`MoveOptions::propagation_timeout`].
    pub propagated_ms: Option<f64>,
    /// Those BIRDs.
    pub choosers: Vec<String>,
    /// When the old owner's withdrawal was sent (`disable moved`), once
    /// the announcement had propagated.
    pub withdrawn_ms: f64,
    /// The first echo request the new owner's underlay saw after the
    /// announcement.
    pub first_at_new_ms: Option<f64>,
    /// The last echo request the old owner's underlay saw.
    pub last_at_old_ms: Option<f64>,
    /// Echo requests the new owner saw before the announcement (0 unless
    /// something else routed there).
    pub early_at_new: usize,
    /// Whether the requests reached the new owner encapsulated (IPIP).
    pub encapsulated: Option<bool>,
    /// The ping stream.
    pub ping: PingResult,
}

impl BlockMove {
    /// Pings lost during the stream.
    pub fn lost(&self) -> u32 {
        self.ping.transmitted.saturating_sub(self.ping.received)
    }

    /// The ICMP errors ping reported instead of replies, e.g. `From
    /// 172.16.66.35 icmp_seq=812 Destination Net Unreachable` (the
    /// pinger's node had no route for a moment).
    pub fn errors(&self) -> Vec<&str> {
        self.ping
            .raw
            .lines()
            .filter(|l| l.starts_with("From ") && l.contains("Unreachable"))
            .collect()
    }
}

impl std::fmt::Display for BlockMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{t:+.1} ms"));
        writeln!(
            f,
            "  {MOVED_BLOCK} {} -> {}: announced by {} at +0 ms",
            self.from, self.to, self.to
        )?;
        let who = if self.choosers.len() <= 3 {
            self.choosers.join(", ")
        } else {
            format!("{} BIRDs", self.choosers.len())
        };
        match self.propagated_ms {
            Some(t) => write!(f, "  its path known to {who} at {}", ms(Some(t)))?,
            None => write!(
                f,
                "  its path NOT known to {who} in time (break before make)"
            )?,
        }
        writeln!(
            f,
            "; withdrawn by {} at {}",
            self.from,
            ms(Some(self.withdrawn_ms))
        )?;
        writeln!(
            f,
            "  last echo request at the old owner ({}): {}",
            self.from,
            ms(self.last_at_old_ms)
        )?;
        writeln!(
            f,
            "  first echo request at the new owner ({}): {}{}",
            self.to,
            ms(self.first_at_new_ms),
            match self.encapsulated {
                Some(true) => " (IPIP)",
                Some(false) => " (native, same subnet)",
                None => "",
            }
        )?;
        write!(
            f,
            "  pings from {}: {} sent, {} answered, {} lost",
            self.pinger,
            self.ping.transmitted,
            self.ping.received,
            self.lost()
        )?;
        for e in self.errors() {
            write!(f, "\n    {e}")?;
        }
        Ok(())
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Echo requests to the moved address in a capture.
fn requests(pcap: &Path) -> Result<Vec<CapturedPacket>, BgpError> {
    let packets = capture::read_pcap(pcap).map_err(|e| TopologyError::Parse {
        tool: "tcpdump",
        detail: e.to_string(),
    })?;
    Ok(packets
        .into_iter()
        .filter(|p| {
            p.innermost().dst == MOVED_ADDRESS && p.payload.starts_with("ICMP echo request")
        })
        .collect())
}

impl BgpCluster {
    /// The running BIRDs that choose between the old and the new owner's
    /// path: the route reflectors, or in a mesh every node but `to`.
    fn path_choosers(&self, to: &str) -> Vec<String> {
        self.birds()
            .iter()
            .filter(|b| b.pid.is_some() && b.name != to)
            .filter(|b| b.reflector || self.spec().is_mesh())
            .map(|b| b.name.clone())
            .collect()
    }

    /// Whether BIRD on `name` has a BGP path for [`MOVED_BLOCK`] with next
    /// hop `via`.
    fn has_path(&self, name: &str, via: Ipv4Addr) -> Result<bool, BgpError> {
        let filter = format!("net = {MOVED_BLOCK} && source = RTS_BGP && bgp_next_hop = {via}");
        let reply = self.birdc(name, &["show", "route", "where", &filter])?;
        Ok(reply.contains(&MOVED_BLOCK.to_string()))
    }

    /// Polls the BIRDs `names` until each has a path for [`MOVED_BLOCK`]
    /// via `via`: returns when, or `None` past `timeout`.
    fn wait_for_path(
        &self,
        names: &[String],
        via: Ipv4Addr,
        timeout: Duration,
    ) -> Result<Option<SystemTime>, BgpError> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<&String> = names.iter().collect();
        loop {
            let mut still = Vec::new();
            for name in pending {
                if !self.has_path(name, via)? {
                    still.push(name);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(Some(SystemTime::now()));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Moves [`MOVED_BLOCK`] from its owner to node `to` (node 1 or 2: the
    /// two that may own it) while the pod `pinger` pings [`MOVED_ADDRESS`]:
    /// `birdc enable moved` on `to`; once the route reflectors (or in a
    /// mesh the other nodes) have its path, `birdc disable moved` on the
    /// old owner. Returns what the captures and ping saw.
    pub fn move_block(
        &mut self,
        to: &str,
        pinger: &str,
        options: MoveOptions,
    ) -> Result<BlockMove, BgpError> {
        let from = self.moved_owner.clone();
        if from == to {
            return Err(TopologyError::InvalidSpec(format!(
                "{to} owns {MOVED_BLOCK} already"
            )));
        }
        let c = self.cluster();
        let dir = self.tunl().dir().to_owned();
        let pcap = |node: &str| -> PathBuf { dir.join(format!("move-{node}.pcap")) };
        let filter = format!("ip proto 4 or dst host {MOVED_ADDRESS}");
        let mut dumps = Vec::new();
        for node in [&from, to] {
            dumps.push(crate::lab::start_tcpdump(c, node, &pcap(node), &filter)?);
        }
        // tcpdump writes the file before its filter is attached.
        std::thread::sleep(Duration::from_millis(300));

        let count = ((options.before + options.after).as_secs_f64()
            / options.interval.as_secs_f64())
        .ceil() as u32;
        let to_addr = c
            .node(to)
            .map(|n| n.underlay)
            .ok_or_else(|| TopologyError::NotFound {
                kind: "node",
                name: to.to_owned(),
            })?;
        let choosers = self.path_choosers(to);
        let (ping, t_announce, t_propagated, t_withdraw) = std::thread::scope(|s| {
            let stream = s.spawn(|| c.ping(pinger, MOVED_ADDRESS, count, options.interval));
            std::thread::sleep(options.before);
            let t_announce = SystemTime::now();
            let announced = self.birdc(to, &["enable", MOVED_PROTOCOL]);
            let propagated = announced
                .as_ref()
                .ok()
                .map(|_| self.wait_for_path(&choosers, to_addr, options.propagation_timeout));
            let t_withdraw = SystemTime::now();
            let withdrawn = self.birdc(&from, &["disable", MOVED_PROTOCOL]);
            let ping = stream
                .join()
                .map_err(|_| TopologyError::Timeout("the ping stream panicked".to_owned()))?;
            announced?;
            withdrawn?;
            let t_propagated = propagated.transpose()?.flatten();
            Ok::<_, BgpError>((ping?, t_announce, t_propagated, t_withdraw))
        })?;
        std::thread::sleep(Duration::from_millis(200));
        for pid in dumps {
            let _ = c.signal(pid, libc::SIGINT);
            let _ = c.wait_timeout(pid, Duration::from_secs(5));
        }

        let t0 = since_epoch(t_announce);
        let ms = |t: Duration| (t.as_secs_f64() - t0.as_secs_f64()) * 1e3;
        let at_new = requests(&pcap(to))?;
        let at_old = requests(&pcap(&from))?;
        let after = |p: &&CapturedPacket| p.timestamp >= t0;
        let first_new = at_new.iter().find(after);
        self.moved_owner = to.to_owned();
        Ok(BlockMove {
            from,
            to: to.to_owned(),
            pinger: pinger.to_owned(),
            propagated_ms: t_propagated.map(|t| ms(since_epoch(t))),
            choosers,
            withdrawn_ms: ms(since_epoch(t_withdraw)),
            first_at_new_ms: first_new.map(|p| ms(p.timestamp)),
            last_at_old_ms: at_old.last().map(|p| ms(p.timestamp)),
            early_at_new: at_new.iter().filter(|p| p.timestamp < t0).count(),
            encapsulated: first_new.map(|p| p.is_ipip()),
            ping,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_move(raw: &str, received: u32, propagated_ms: Option<f64>) -> BlockMove {
        BlockMove {
            from: "node1".into(),
            to: "node2".into(),
            pinger: "node3-pod1".into(),
            propagated_ms,
            choosers: vec!["rr1".into()],
            withdrawn_ms: 1.5,
            first_at_new_ms: Some(2.25),
            last_at_old_ms: Some(1.0),
            early_at_new: 0,
            encapsulated: Some(true),
            ping: PingResult {
                transmitted: 10,
                received,
                ttls: vec![],
                rtts_ms: vec![],
                raw: raw.into(),
            },
        }
    }

    #[test]
    fn shows_the_unreachables_ping_got_instead_of_replies() {
        let raw = "64 bytes from 10.20.255.193: icmp_seq=1 ttl=62 time=0.1 ms\n\
                   From 172.16.37.6 icmp_seq=2 Destination Net Unreachable\n\
                   --- 10.20.255.193 ping statistics ---\n";
        let m = a_move(raw, 9, Some(1.25));
        assert_eq!(
            m.errors(),
            ["From 172.16.37.6 icmp_seq=2 Destination Net Unreachable"]
        );
        assert_eq!(m.lost(), 1);
        let text = m.to_string();
        assert!(
            text.contains("its path known to rr1 at +1.2 ms; withdrawn by node1 at +1.5 ms"),
            "{text}"
        );
        assert!(text.contains("node2): +2.2 ms (IPIP)"), "{text}");
        assert!(
            text.ends_with("1 lost\n    From 172.16.37.6 icmp_seq=2 Destination Net Unreachable"),
            "{text}"
        );
    }

    #[test]
    fn says_when_the_announcement_did_not_propagate() {
        let m = a_move("", 10, None);
        assert!(m.errors().is_empty());
        let text = m.to_string();
        assert!(text.contains("NOT known to rr1 in time"), "{text}");
        assert!(text.ends_with("10 answered, 0 lost"), "{text}");
    }
}
