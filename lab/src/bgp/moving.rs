//! A block move under traffic: the new owner announces [`MOVED_BLOCK`],
//! then the old owner withdraws it (make before break), while a pod on a
//! third node pings [`MOVED_ADDRESS`]. Captures on both owners' underlay
//! show when the echo requests stopped reaching the old owner and started
//! reaching the new one; ping counts what was lost.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BgpCluster, BgpError, MOVED_ADDRESS, MOVED_BLOCK, config::MOVED_PROTOCOL};
use crate::capture::{self, CapturedPacket};
use crate::topology::{PingResult, ProcessOutput, TopologyError};

/// How a block move runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveOptions {
    /// Interval of the ping stream.
    pub interval: Duration,
    /// Pinging before the move.
    pub before: Duration,
    /// Pinging after the move.
    pub after: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(2),
            before: Duration::from_secs(1),
            after: Duration::from_secs(2),
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
    /// When the old owner's withdrawal was sent (`disable moved`).
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
}

impl std::fmt::Display for BlockMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{t:+.1} ms"));
        writeln!(
            f,
            "  {MOVED_BLOCK} {} -> {}: announced by {} at +0 ms, withdrawn by {} at {}",
            self.from,
            self.to,
            self.to,
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
        )
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
    /// Moves [`MOVED_BLOCK`] from its owner to node `to` (node 1 or 2: the
    /// two that may own it) while the pod `pinger` pings [`MOVED_ADDRESS`]:
    /// `birdc enable moved` on `to`, then `birdc disable moved` on the old
    /// owner. Returns what the captures and ping saw.
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
            let file = pcap(node);
            let _ = std::fs::remove_file(&file);
            let file_arg = file.to_string_lossy().into_owned();
            let pid = c.spawn(
                node,
                &[
                    "tcpdump",
                    "-i",
                    "eth0",
                    "-nn",
                    "--immediate-mode",
                    "-U",
                    "-w",
                    &file_arg,
                    &filter,
                ],
                ProcessOutput::Null,
            )?;
            dumps.push(pid);
            crate::lab::wait_for_file(&file, Duration::from_secs(5));
        }
        // tcpdump writes the file before its filter is attached.
        std::thread::sleep(Duration::from_millis(300));

        let count = ((options.before + options.after).as_secs_f64()
            / options.interval.as_secs_f64())
        .ceil() as u32;
        let (ping, t_announce, t_withdraw) = std::thread::scope(|s| {
            let stream = s.spawn(|| c.ping(pinger, MOVED_ADDRESS, count, options.interval));
            std::thread::sleep(options.before);
            let t_announce = SystemTime::now();
            let announced = self.birdc(to, &["enable", MOVED_PROTOCOL]);
            let t_withdraw = SystemTime::now();
            let withdrawn = self.birdc(&from, &["disable", MOVED_PROTOCOL]);
            let ping = stream
                .join()
                .map_err(|_| TopologyError::Timeout("the ping stream panicked".to_owned()))?;
            announced?;
            withdrawn?;
            Ok::<_, BgpError>((ping?, t_announce, t_withdraw))
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
            withdrawn_ms: ms(since_epoch(t_withdraw)),
            first_at_new_ms: first_new.map(|p| ms(p.timestamp)),
            last_at_old_ms: at_old.last().map(|p| ms(p.timestamp)),
            early_at_new: at_new.iter().filter(|p| p.timestamp < t0).count(),
            encapsulated: first_new.map(|p| p.is_ipip()),
            ping,
        })
    }
}
