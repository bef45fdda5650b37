//! What `tunl status` and `tunl stats` print: text for people (human units,
//! in the spirit of `wg show`), tab-separated records for scripts
//! (`status --dump`), and `stats --json` as one object.

use std::fmt::Write as _;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use tunl::control::{Stats, Status, UnderlayStatus};

/// Refused sources `tunl status` lists; the rest are summed in one line.
pub const STATUS_REFUSED_LINES: usize = 8;

/// Bytes in binary units, as `wg show` writes them: `512 B`, `1.50 KiB`,
/// `3.25 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// A count in decimal units: `980`, `1.20 k`, `3.40 M`, `1.00 G`.
pub fn count(n: u64) -> String {
    const UNITS: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    if n < 1000 {
        return n.to_string();
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// A duration in its two largest units, as `wg show` writes them: `5
/// seconds`, `2 minutes, 3 seconds`, `1 day, 4 hours`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    let units = [
        (s / 86_400, "day"),
        (s / 3600 % 24, "hour"),
        (s / 60 % 60, "minute"),
        (s % 60, "second"),
    ];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    units[first..]
        .iter()
        .take(2)
        .filter(|(n, _)| *n > 0 || first == 3)
        .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let d = Duration::from_millis(now_ms.saturating_sub(then_ms));
    if d.as_secs() == 0 {
        return "just now".to_owned();
    }
    format!("{} ago", duration(d))
}

fn transfer(rx_bytes: u64, tx_bytes: u64) -> String {
    format!("{} received, {} sent", bytes(rx_bytes), bytes(tx_bytes))
}

/// The `underlay:` line of `tunl status`: what runs (with XDP, its mode and
/// sockets, and how many workers have one), and what was asked for when
/// that differs.
fn underlay_line(u: &UnderlayStatus, workers: usize) -> String {
    let mut line = u.running.clone();
    if u.running == "xdp" {
        let mode = u.xdp_mode.as_deref().unwrap_or("?");
        let plural = if u.xdp_sockets == 1 { "" } else { "s" };
        let _ = write!(line, " ({mode}, {} socket{plural}", u.xdp_sockets);
        if u.xdp_workers < workers {
            let _ = write!(
                line,
                "; {} of {workers} workers, the others on packet",
                u.xdp_workers
            );
        }
        line.push(')');
    }
    if !u.requested.is_empty() && u.requested != u.running {
        let _ = write!(line, " (asked for {})", u.requested);
    }
    line
}

/// The text `tunl status` prints.
pub fn format_status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "device: {}", s.device);
    if !s.version.is_empty() {
        let _ = writeln!(o, "  version: {} (commit {})", s.version, s.commit);
    }
    if s.started_unix_ms > 0 {
        let up = Duration::from_millis(s.now_unix_ms.saturating_sub(s.started_unix_ms));
        let _ = writeln!(o, "  uptime: {}", duration(up));
    }
    match &s.underlay_link {
        Some(u) if !u.local_present => {
            let _ = writeln!(
                o,
                "  local: {} (missing: not an address of this node; nothing is sent)",
                s.local
            );
        }
        _ => {
            let _ = writeln!(o, "  local: {}", s.local);
        }
    }
    if let Some(u) = &s.underlay_link {
        let device = u.device.as_deref().unwrap_or("none");
        let _ = writeln!(o, "  underlay device: {device} ({})", u.state);
    }
    let _ = writeln!(o, "  mtu: {}", s.mtu);
    if let Some(a) = s.address {
        let _ = writeln!(o, "  address: {a}");
    }
    if !s.blocks.is_empty() {
        let b: Vec<String> = s.blocks.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "  blocks: {}", b.join(", "));
    }
    let _ = writeln!(o, "  workers: {}", s.workers);
    if !s.underlay.running.is_empty() {
        let _ = writeln!(o, "  underlay: {}", underlay_line(&s.underlay, s.workers));
    }
    if let Some(why) = &s.underlay.fallback {
        let _ = writeln!(o, "  underlay fallback: {why}");
    }
    let by_origin: Vec<String> = s
        .routes_by_origin
        .iter()
        .map(|(origin, n)| format!("{origin} {n}"))
        .collect();
    if by_origin.is_empty() {
        let _ = writeln!(o, "  routes: {}", s.routes);
    } else {
        let _ = writeln!(o, "  routes: {} ({})", s.routes, by_origin.join(", "));
    }
    if s.route_resyncs > 0 {
        let _ = writeln!(o, "  route resyncs: {}", s.route_resyncs);
    }
    let (rx, tx) = s.nodes.iter().fold((0u64, 0u64), |(rx, tx), n| {
        (rx.saturating_add(n.rx_bytes), tx.saturating_add(n.tx_bytes))
    });
    let _ = writeln!(o, "  transfer: {}", transfer(rx, tx));
    for n in &s.nodes {
        let b: Vec<String> = n
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| match n.origins.get(i) {
                Some(origin) => format!("{b} ({origin})"),
                None => b.to_string(),
            })
            .collect();
        let _ = writeln!(o, "\nnode: {}", n.node);
        let _ = writeln!(o, "  blocks: {}", b.join(", "));
        let _ = writeln!(o, "  path mtu: {}", n.path_mtu);
        let seen = n
            .last_seen_unix_ms
            .map_or_else(|| "never".to_owned(), |t| ago(s.now_unix_ms, t));
        let _ = writeln!(o, "  last seen: {seen}");
        let _ = writeln!(o, "  transfer: {}", transfer(n.rx_bytes, n.tx_bytes));
        let _ = writeln!(
            o,
            "  packets: {} received, {} sent",
            count(n.rx_packets),
            count(n.tx_packets)
        );
    }
    let mut refused = s.refused.clone();
    // Sources still refused first, the busiest first.
    refused.sort_by(|a, b| {
        a.accepted_now
            .cmp(&b.accepted_now)
            .then(b.packets.cmp(&a.packets))
            .then(a.source.cmp(&b.source))
    });
    for r in refused.iter().take(STATUS_REFUSED_LINES) {
        let why = if r.accepted_now {
            "accepted now: it became a node or was allowed after these packets"
        } else {
            "not a node, not allowed"
        };
        let _ = writeln!(
            o,
            "\nrefused source: {} ({why})\n  packets: {}\n  last seen: {}",
            r.source,
            count(r.packets),
            ago(s.now_unix_ms, r.last_seen_unix_ms)
        );
    }
    let rest: u64 = refused
        .iter()
        .skip(STATUS_REFUSED_LINES)
        .map(|r| r.packets)
        .sum::<u64>()
        + s.refused_other_packets;
    if rest > 0 {
        let more = refused.len().saturating_sub(STATUS_REFUSED_LINES);
        let _ = writeln!(
            o,
            "\nrefused from other sources: {} packets ({more} more listed in --json and --dump{})",
            count(rest),
            if s.refused_other_packets > 0 {
                ", and sources past the table"
            } else {
                ""
            }
        );
    }
    o
}

/// `tunl status --dump`: tab-separated records, as the `status` help and
/// docs/operating.md list their fields.
pub fn dump_status(s: &Status) -> String {
    let secs = |ms: u64| (ms / 1000).to_string();
    let list = |items: &[ipnetwork::Ipv4Network]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let or_dash = |v: &str| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.to_owned()
        }
    };
    let mut o = String::new();
    let record = |o: &mut String, fields: &[String]| {
        let _ = writeln!(o, "{}", fields.join("\t"));
    };
    record(
        &mut o,
        &[
            "device".to_owned(),
            s.device.clone(),
            s.local.to_string(),
            s.mtu.to_string(),
            s.address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            list(&s.blocks),
            s.workers.to_string(),
            s.routes.to_string(),
            secs(s.started_unix_ms),
            or_dash(&s.version),
            or_dash(&s.commit),
        ],
    );
    if let Some(u) = &s.underlay_link {
        record(
            &mut o,
            &[
                "underlay".to_owned(),
                u8::from(u.local_present).to_string(),
                or_dash(u.device.as_deref().unwrap_or("")),
                u.state.clone(),
            ],
        );
    }
    for n in &s.nodes {
        record(
            &mut o,
            &[
                "node".to_owned(),
                n.node.to_string(),
                list(&n.blocks),
                n.path_mtu.to_string(),
                n.rx_packets.to_string(),
                n.rx_bytes.to_string(),
                n.tx_packets.to_string(),
                n.tx_bytes.to_string(),
                secs(n.last_seen_unix_ms.unwrap_or(0)),
            ],
        );
    }
    for r in &s.refused {
        record(
            &mut o,
            &[
                "refused".to_owned(),
                r.source.to_string(),
                r.packets.to_string(),
                secs(r.last_seen_unix_ms),
                u8::from(r.accepted_now).to_string(),
            ],
        );
    }
    record(
        &mut o,
        &[
            "refused_other".to_owned(),
            s.refused_other_packets.to_string(),
        ],
    );
    o
}

/// The text `tunl stats` prints.
pub fn format_stats(s: &Stats) -> String {
    let mut o = String::new();
    for (name, v) in &s.counters {
        let _ = writeln!(o, "{name}: {v}");
    }
    let _ = writeln!(o, "drops: {}", s.drops_total);
    for (reason, v) in &s.drops {
        let _ = writeln!(o, "  {reason}: {v}");
    }
    o
}

/// `tunl stats --json`: one object, every counter a key in the daemon's
/// order, then `drops` (an object by reason) and `drops_total`:
/// `{"tx_packets": 1, ..., "drops": {"no_route": 0, ...}, "drops_total": 0}`.
#[derive(Debug)]
pub struct StatsObject<'a>(pub &'a Stats);

impl Serialize for StatsObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Drops<'a>(&'a [(String, u64)]);
        impl Serialize for Drops<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut m = serializer.serialize_map(Some(self.0.len()))?;
                for (reason, n) in self.0 {
                    m.serialize_entry(reason, n)?;
                }
                m.end()
            }
        }
        let s = self.0;
        let mut m = serializer.serialize_map(Some(s.counters.len() + 2))?;
        for (name, v) in &s.counters {
            m.serialize_entry(name, v)?;
        }
        m.serialize_entry("drops", &Drops(&s.drops))?;
        m.serialize_entry("drops_total", &s.drops_total)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tunl::control::{NodeStatus, RefusedStatus, UnderlayLink, UnderlayStatus};

    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KiB");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(1_288_490_189), "1.20 GiB");
        assert_eq!(bytes(u64::MAX), "16.00 EiB");
        assert_eq!(count(999), "999");
        assert_eq!(count(1200), "1.20 k");
        assert_eq!(count(3_400_000), "3.40 M");
        assert_eq!(count(u64::MAX), "18.45 E");
        let d = |s| duration(Duration::from_secs(s));
        assert_eq!(d(0), "0 seconds");
        assert_eq!(d(1), "1 second");
        assert_eq!(d(59), "59 seconds");
        assert_eq!(d(60), "1 minute");
        assert_eq!(d(123), "2 minutes, 3 seconds");
        assert_eq!(d(7200 + 59), "2 hours");
        assert_eq!(d(86_400 + 4 * 3600 + 5), "1 day, 4 hours");
        assert_eq!(ago(10_000, 10_000), "just now");
        assert_eq!(ago(70_000, 5_000), "1 minute, 5 seconds ago");
    }

    fn refused(last: u8, packets: u64, accepted_now: bool) -> RefusedStatus {
        RefusedStatus {
            source: Ipv4Addr::new(172, 16, 200, last),
            packets,
            last_seen_unix_ms: 1_000,
            accepted_now,
        }
    }

    fn status(refused: Vec<RefusedStatus>) -> Status {
        Status {
            device: "tunl0".to_owned(),
            mtu: 1480,
            local: Ipv4Addr::new(172, 16, 35, 4),
            address: Some("10.20.42.0/32".parse().unwrap()),
            blocks: vec!["10.20.42.0/26".parse().unwrap()],
            workers: 1,
            underlay: UnderlayStatus {
                requested: "xdp".to_owned(),
                running: "xdp".to_owned(),
                xdp_mode: Some("generic".to_owned()),
                xdp_sockets: 1,
                xdp_workers: 1,
                fallback: None,
            },
            routes: 1,
            routes_by_origin: vec![("bird".to_owned(), 1)],
            route_resyncs: 0,
            route_updates: 1,
            last_route_update_ns: 0,
            now_unix_ms: 1_764_007_322_000,
            started_unix_ms: 1_764_000_000_000,
            version: "0.1.0".to_owned(),
            commit: "abc1234".to_owned(),
            nodes: vec![NodeStatus {
                node: Ipv4Addr::new(172, 16, 36, 5),
                blocks: vec!["10.20.105.192/26".parse().unwrap()],
                origins: vec!["bird".into()],
                path_mtu: 1480,
                tx_packets: 980,
                tx_bytes: 88_200,
                rx_packets: 1_204_000,
                rx_bytes: 1_735_104_000,
                last_seen_unix_ms: Some(1_764_007_320_000),
            }],
            refused,
            refused_other_packets: 0,
            underlay_link: Some(UnderlayLink {
                local_present: true,
                device: Some("eth0".to_owned()),
                state: "up".to_owned(),
            }),
        }
    }

    #[test]
    fn status_text_counts_routes_by_origin_and_says_resyncs() {
        let text = format_status(&status(vec![]));
        assert!(!text.contains("route resyncs"), "{text}");
        let mut s = status(vec![]);
        s.routes = 3;
        s.routes_by_origin = vec![("bird".to_owned(), 2), ("tunl".to_owned(), 1)];
        s.route_resyncs = 2;
        let text = format_status(&s);
        assert!(
            text.contains("  routes: 3 (bird 2, tunl 1)\n  route resyncs: 2\n"),
            "{text}"
        );
    }

    #[test]
    fn status_text_is_like_wg_show() {
        let text = format_status(&status(vec![]));
        for line in [
            "device: tunl0\n",
            "  version: 0.1.0 (commit abc1234)\n",
            "  uptime: 2 hours, 2 minutes\n",
            "  transfer: 1.62 GiB received, 86.13 KiB sent\n",
            "\nnode: 172.16.36.5\n",
            "  last seen: 2 seconds ago\n",
            "  packets: 1.20 M received, 980 sent\n",
            "  routes: 1 (bird 1)\n",
            "  blocks: 10.20.105.192/26 (bird)\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        assert!(
            text.contains("  local: 172.16.35.4\n  underlay device: eth0 (up)\n"),
            "{text}"
        );
        let mut old = status(vec![]);
        old.version.clear();
        old.started_unix_ms = 0;
        old.underlay_link = None;
        old.underlay = UnderlayStatus::default();
        let text = format_status(&old);
        assert!(
            !text.contains("version:") && !text.contains("uptime:") && !text.contains("underlay:"),
            "{text}"
        );
    }

    #[test]
    fn the_underlay_line_says_what_runs_and_why() {
        let text = format_status(&status(vec![]));
        assert!(
            text.contains("  underlay: xdp (generic, 1 socket)\n"),
            "{text}"
        );
        let mut s = status(vec![]);
        s.workers = 2;
        s.underlay.xdp_sockets = 1;
        let text = format_status(&s);
        assert!(
            text.contains(
                "  underlay: xdp (generic, 1 socket; 1 of 2 workers, the others on packet)\n"
            ),
            "{text}"
        );
        s.underlay = UnderlayStatus {
            requested: "xdp".to_owned(),
            running: "packet".to_owned(),
            fallback: Some("xdp: eth0: another XDP program is attached".to_owned()),
            ..UnderlayStatus::default()
        };
        let text = format_status(&s);
        assert!(
            text.contains("  underlay: packet (asked for xdp)\n"),
            "{text}"
        );
        assert!(
            text.contains("  underlay fallback: xdp: eth0: another XDP program is attached\n"),
            "{text}"
        );
        // A daemon from before the field (and before `underlay_link`): no
        // line.
        s.underlay = UnderlayStatus::default();
        let text = format_status(&s);
        assert!(
            !text.contains("underlay:") && !text.contains("underlay fallback"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_local_address_and_a_downed_underlay_show() {
        let mut s = status(vec![]);
        s.underlay_link = Some(UnderlayLink {
            local_present: false,
            device: Some("eth0".to_owned()),
            state: "down".to_owned(),
        });
        let text = format_status(&s);
        assert!(
            text.contains(
                "  local: 172.16.35.4 (missing: not an address of this node; nothing is sent)\n  underlay device: eth0 (down)\n"
            ),
            "{text}"
        );
        let dump = dump_status(&s);
        assert!(dump.contains("\nunderlay\t0\teth0\tdown\n"), "{dump}");
    }

    #[test]
    fn a_refused_source_accepted_now_says_so_and_comes_after_the_others() {
        let text = format_status(&status(vec![refused(1, 500, true), refused(2, 3, false)]));
        let still = text
            .find("refused source: 172.16.200.2 (not a node, not allowed)")
            .expect(&text);
        let now = text
            .find(
                "refused source: 172.16.200.1 (accepted now: it became a node or was allowed \
                 after these packets)",
            )
            .expect(&text);
        assert!(still < now, "{text}");
    }

    #[test]
    fn the_dump_is_tab_separated_records() {
        let dump = dump_status(&status(vec![refused(9, 30, true)]));
        let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(
            lines,
            [
                vec![
                    "device",
                    "tunl0",
                    "172.16.35.4",
                    "1480",
                    "10.20.42.0/32",
                    "10.20.42.0/26",
                    "1",
                    "1",
                    "1764000000",
                    "0.1.0",
                    "abc1234"
                ],
                vec!["underlay", "1", "eth0", "up"],
                vec![
                    "node",
                    "172.16.36.5",
                    "10.20.105.192/26",
                    "1480",
                    "1204000",
                    "1735104000",
                    "980",
                    "88200",
                    "1764007320"
                ],
                vec!["refused", "172.16.200.9", "30", "1", "1"],
                vec!["refused_other", "0"],
            ]
        );
    }

    #[test]
    fn stats_json_is_one_object_in_the_daemons_order() {
        let stats = Stats {
            counters: vec![("tx_packets".to_owned(), 3), ("rx_packets".to_owned(), 2)],
            drops: vec![("unknown_source".to_owned(), 1), ("no_route".to_owned(), 0)],
            drops_total: 1,
        };
        assert_eq!(
            serde_json::to_string(&StatsObject(&stats)).unwrap(),
            r#"{"tx_packets":3,"rx_packets":2,"drops":{"unknown_source":1,"no_route":0},"drops_total":1}"#
        );
    }
}
