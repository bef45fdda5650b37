//! TOML text to a [`Config`]: every key's type, range and form, checked one
//! value at a time, every problem recorded (see [`Problems`]).
//!
//! The file is parsed into a TOML table first (a syntax error stops there,
//! with its line and column); then each section is read key by key in the
//! order of the docs. A value that is missing or wrong is reported and
//! replaced by its default (a route with a bad field is left out), so the
//! rules between keys ([`super::check`]) still run on the rest.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU8;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use toml::{Table, Value};
use tunl_encap::Ttl;

use super::{
    Config, ConfigError, ControlSection, DataplaneSection, MAX_BUSY_POLL_US, MAX_MTU,
    MAX_POLL_INTERVAL_US, MAX_POLL_QUIET_US, MAX_WORKERS, MIN_MTU, MetricsSection, Problems,
    RouteEntry, RoutingSection, SecuritySection, TunnelSection, check_prefix, parse_prefix,
};

/// The sections of the file, as the docs name them.
const SECTIONS: &[(&str, &str)] = &[
    ("tunnel", "[tunnel]"),
    ("route", "[[route]]"),
    ("security", "[security]"),
    ("control", "[control]"),
    ("metrics", "[metrics]"),
    ("dataplane", "[dataplane]"),
    ("routing", "[routing]"),
];

/// Reads `text`: the config (with defaults where a value was wrong), the
/// file index of each route kept (to name it `route[i]`), and the problems.
///
/// # Errors
/// [`ConfigError::Syntax`] when `text` is not TOML.
pub(super) fn read(text: &str, path: &Path) -> Result<(Config, Vec<usize>, Problems), ConfigError> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = line_and_column(text, e.span().map_or(0, |s| s.start));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: one_line(e.message()),
        }
    })?;
    let mut p = Problems::default();
    for key in table.keys() {
        if !SECTIONS.iter().any(|(name, _)| name == key) {
            let known: Vec<&str> = SECTIONS.iter().map(|(_, shown)| *shown).collect();
            let hint = suggestion(key, SECTIONS.iter().map(|(name, _)| *name));
            p.push(
                shown_key(key),
                format!("unknown section (known: {}){hint}", known.join(", ")),
            );
        }
    }
    let tunnel = tunnel(&table, &mut p);
    let (routes, route_keys) = routes(&table, &mut p);
    let config = Config {
        path: path.to_owned(),
        tunnel,
        routes,
        security: security(&table, &mut p),
        control: control(&table, &mut p),
        metrics: metrics(&table, &mut p),
        dataplane: dataplane(&table, &mut p),
        routing: routing(&table, &mut p),
    };
    Ok((config, route_keys, p))
}

/// A key as a problem names it: bare when TOML would write it bare, else
/// quoted (an empty key, `"" = 1`, is still named: `""`).
fn shown_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Line and column (from 1, in characters) of byte `at` of `text`.
fn line_and_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A message on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `; did you mean `NAME`?` for the known name closest to `key` (at most
/// two edits away), or nothing.
fn suggestion<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance of two short words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// One table of the file (a section, or a `[[route]]` entry), read key by
/// key; the keys it does not know are reported by [`Section::finish`].
struct Section<'t> {
    /// How keys are named: `tunnel`, `route[2]`.
    name: String,
    table: Option<&'t Table>,
    known: &'static [&'static str],
}

impl<'t> Section<'t> {
    /// Section `name` of the file (absent: every key takes its default);
    /// a value that is not a table is reported.
    fn of(file: &'t Table, name: &str, known: &'static [&'static str], p: &mut Problems) -> Self {
        let table = match file.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                p.push(
                    format!("[{name}]"),
                    format!(
                        "expected a section ([{name}] and its keys), found {}",
                        found(other)
                    ),
                );
                None
            }
        };
        Section {
            name: name.to_owned(),
            table,
            known,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    /// The value of `key`, if present.
    fn get(&self, key: &str) -> Option<(String, &'t Value)> {
        debug_assert!(self.known.contains(&key), "{key} not in the known keys");
        self.table
            .and_then(|t| t.get(key))
            .map(|v| (self.key(key), v))
    }

    /// Reports the keys this section does not know.
    fn finish(&self, p: &mut Problems) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            if !self.known.contains(&key.as_str()) {
                let hint = suggestion(key, self.known.iter().copied());
                p.push(
                    self.key(&shown_key(key)),
                    format!("unknown key (known: {}){hint}", self.known.join(", ")),
                );
            }
        }
    }
}

/// `"abc"`, `70000`, `1.5`, `true`, `an array`, ...: a value as the file
/// has it.
fn found(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn expected(p: &mut Problems, key: &str, what: &str, v: &Value) {
    p.push(key, format!("expected {what}, found {}", found(v)));
}

/// A whole number in `lo..=hi` (`unit` follows the range in the message).
fn number<T: TryFrom<i64>>(
    p: &mut Problems,
    (key, v): (String, &Value),
    lo: i64,
    hi: i64,
    unit: &str,
) -> Option<T> {
    let range = if hi == i64::from(u32::MAX) {
        format!("a number of at least {lo}{unit}")
    } else {
        format!("a number {lo}..={hi}{unit}")
    };
    match v.as_integer() {
        Some(n) if (lo..=hi).contains(&n) => T::try_from(n).ok(),
        _ => {
            expected(p, &key, &range, v);
            None
        }
    }
}

fn boolean(p: &mut Problems, (key, v): (String, &Value)) -> Option<bool> {
    let b = v.as_bool();
    if b.is_none() {
        expected(p, &key, "true or false", v);
    }
    b
}

fn string<'v>(p: &mut Problems, (key, v): (String, &'v Value), what: &str) -> Option<&'v str> {
    let s = v.as_str();
    if s.is_none() {
        expected(p, &key, what, v);
    }
    s
}

/// A string parsed as `T`; `what` describes the form in the message.
fn parsed<T: std::str::FromStr>(
    p: &mut Problems,
    (key, v): (String, &Value),
    what: &str,
) -> Option<T> {
    match v.as_str().map(str::parse) {
        Some(Ok(t)) => Some(t),
        _ => {
            expected(p, &key, what, v);
            None
        }
    }
}

const ADDRESS: &str = "an IPv4 address (e.g. \"172.16.35.4\")";

fn address(p: &mut Problems, kv: (String, &Value)) -> Option<Ipv4Addr> {
    parsed(p, kv, ADDRESS)
}

/// A prefix with its length and no host bits.
fn prefix(p: &mut Problems, (key, v): (String, &Value)) -> Option<Ipv4Network> {
    let Some(text) = v.as_str() else {
        expected(
            p,
            &key,
            "an IPv4 prefix with its length (e.g. \"10.20.105.192/26\")",
            v,
        );
        return None;
    };
    let checked = parse_prefix(text)
        .map_err(|e| e.to_string())
        .and_then(|n| check_prefix(&n).map(|()| n).map_err(|e| e.to_string()));
    match checked {
        Ok(n) => Some(n),
        Err(problem) => {
            p.push(key, problem);
            None
        }
    }
}

/// A list of prefixes; the entries that are wrong are reported and left out.
fn prefixes(p: &mut Problems, (key, v): (String, &Value)) -> Vec<Ipv4Network> {
    let Some(list) = v.as_array() else {
        expected(
            p,
            &key,
            "a list of IPv4 prefixes (e.g. [\"10.20.42.0/26\"])",
            v,
        );
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, v)| prefix(p, (format!("{key}[{i}]"), v)))
        .collect()
}

fn ttl(p: &mut Problems, (key, v): (String, &Value)) -> Option<Ttl> {
    let fixed = v
        .as_integer()
        .and_then(|n| u8::try_from(n).ok())
        .and_then(NonZeroU8::new);
    match (v.as_str(), fixed) {
        (Some("inherit"), _) => Some(Ttl::Inherit),
        (None, Some(n)) => Some(Ttl::Fixed(n)),
        _ => {
            expected(p, &key, "\"inherit\" or a number 1..=255", v);
            None
        }
    }
}

fn tunnel(file: &Table, p: &mut Problems) -> TunnelSection {
    const KEYS: &[&str] = &[
        "name",
        "local",
        "mtu",
        "address",
        "ttl",
        "tos_inherit",
        "pmtudisc",
        "blocks",
        "persist",
    ];
    let s = Section::of(file, "tunnel", KEYS, p);
    let mut t = TunnelSection::default();
    if file.get("tunnel").is_none() {
        p.push(
            "[tunnel]",
            "required: the [tunnel] section, with at least `local` (this node's underlay address)",
        );
    }
    if let Some(name) = s.get("name").and_then(|kv| string(p, kv, "a device name")) {
        name.clone_into(&mut t.name);
    }
    match s.get("local") {
        Some(kv) => t.local = address(p, kv).unwrap_or(t.local),
        None => p.push(
            s.key("local"),
            "required: this node's underlay address, the outer source (e.g. local = \"172.16.35.4\")",
        ),
    }
    if let Some(kv) = s.get("mtu") {
        t.mtu = number(p, kv, MIN_MTU.into(), MAX_MTU.into(), "");
    }
    if let Some(kv) = s.get("address") {
        t.address = prefix(p, kv);
    }
    if let Some(ttl) = s.get("ttl").and_then(|kv| ttl(p, kv)) {
        t.ttl = ttl;
    }
    if let Some(b) = s.get("tos_inherit").and_then(|kv| boolean(p, kv)) {
        t.tos_inherit = b;
    }
    if let Some(b) = s.get("pmtudisc").and_then(|kv| boolean(p, kv)) {
        t.pmtudisc = b;
    }
    if let Some(kv) = s.get("blocks") {
        t.blocks = prefixes(p, kv);
    }
    if let Some(b) = s.get("persist").and_then(|kv| boolean(p, kv)) {
        t.persist = b;
    }
    s.finish(p);
    t
}

/// The `[[route]]` entries that read whole, and the file index of each.
fn routes(file: &Table, p: &mut Problems) -> (Vec<RouteEntry>, Vec<usize>) {
    const KEYS: &[&str] = &["prefix", "via"];
    let mut routes = Vec::new();
    let mut keys = Vec::new();
    let Some(value) = file.get("route") else {
        return (routes, keys);
    };
    let Some(list) = value.as_array() else {
        expected(
            p,
            "[[route]]",
            "route tables ([[route]] with prefix and via)",
            value,
        );
        return (routes, keys);
    };
    for (i, entry) in list.iter().enumerate() {
        let name = format!("route[{i}]");
        let Some(table) = entry.as_table() else {
            expected(p, &name, "a table with prefix and via", entry);
            continue;
        };
        let s = Section {
            name,
            table: Some(table),
            known: KEYS,
        };
        let required = |key: &str, what: &str, p: &mut Problems| {
            let kv = s.get(key);
            if kv.is_none() {
                p.push(s.key(key), format!("required: {what}"));
            }
            kv
        };
        let prefix = required(
            "prefix",
            "the remote block (e.g. prefix = \"10.20.105.192/26\")",
            p,
        )
        .and_then(|kv| prefix(p, kv));
        let via = required("via", "the node owning the block, its underlay address", p)
            .and_then(|kv| address(p, kv));
        s.finish(p);
        if let (Some(prefix), Some(via)) = (prefix, via) {
            routes.push(RouteEntry { prefix, via });
            keys.push(i);
        }
    }
    (routes, keys)
}

fn security(file: &Table, p: &mut Problems) -> SecuritySection {
    let s = Section::of(
        file,
        "security",
        &["allow", "allow_nested", "strict_source", "user"],
        p,
    );
    let mut out = SecuritySection::default();
    if let Some(kv) = s.get("allow") {
        out.allow = prefixes(p, kv);
    }
    if let Some(b) = s.get("allow_nested").and_then(|kv| boolean(p, kv)) {
        out.allow_nested = b;
    }
    if let Some(b) = s.get("strict_source").and_then(|kv| boolean(p, kv)) {
        out.strict_source = b;
    }
    if let Some(kv) = s.get("user") {
        out.user = string(p, kv, "a user name").map(str::to_owned);
    }
    s.finish(p);
    out
}

fn control(file: &Table, p: &mut Problems) -> ControlSection {
    let s = Section::of(file, "control", &["socket"], p);
    let mut out = ControlSection::default();
    if let Some((key, v)) = s.get("socket") {
        match v.as_str() {
            Some(path) if !path.is_empty() => out.socket = PathBuf::from(path),
            _ => expected(p, &key, "the path of a socket", v),
        }
    }
    s.finish(p);
    out
}

fn metrics(file: &Table, p: &mut Problems) -> MetricsSection {
    let s = Section::of(file, "metrics", &["listen"], p);
    let mut out = MetricsSection::default();
    if let Some(kv) = s.get("listen") {
        out.listen = parsed::<SocketAddr>(p, kv, "an address and port (e.g. \"127.0.0.1:9099\")");
    }
    s.finish(p);
    out
}

fn dataplane(file: &Table, p: &mut Problems) -> DataplaneSection {
    const KEYS: &[&str] = &[
        "workers",
        "offload",
        "tx_queue_len",
        "socket_buffer",
        "icmp_rate",
        "underlay",
        "xdp_mode",
        "packet_tx",
        "busy_poll_us",
        "poll_interval_us",
        "poll_quiet_us",
    ];
    let s = Section::of(file, "dataplane", KEYS, p);
    let mut d = DataplaneSection::default();
    let max = i64::from(u32::MAX);
    if let Some(n) = s
        .get("workers")
        .and_then(|kv| number(p, kv, 1, MAX_WORKERS as i64, ""))
    {
        d.workers = n;
    }
    if let Some(b) = s.get("offload").and_then(|kv| boolean(p, kv)) {
        d.offload = b;
    }
    if let Some(n) = s
        .get("tx_queue_len")
        .and_then(|kv| number(p, kv, 1, max, ""))
    {
        d.tx_queue_len = n;
    }
    if let Some(n) = s
        .get("socket_buffer")
        .and_then(|kv| number(p, kv, 0, i64::from(i32::MAX), " (bytes)"))
    {
        d.socket_buffer = n;
    }
    if let Some(n) = s
        .get("icmp_rate")
        .and_then(|kv| number(p, kv, 1, max, " (per second)"))
    {
        d.icmp_rate = n;
    }
    if let Some(kv) = s.get("underlay") {
        d.underlay = parsed(p, kv, "\"raw\", \"packet\", \"xdp\" or \"auto\"");
    }
    if let Some(kv) = s.get("xdp_mode") {
        if let Some(m) = parsed(p, kv, "\"auto\", \"generic\" or \"native\"") {
            d.xdp_mode = m;
        }
    }
    if let Some(kv) = s.get("packet_tx") {
        let key = kv.0.clone();
        d.packet_tx = boolean(p, kv);
        match (d.packet_tx, d.underlay) {
            (Some(b), Some(u)) => p.push(
                key.as_str(),
                format!(
                    "packet_tx = {b} is the deprecated spelling of underlay = \"packet\" \
                     and cannot be combined with underlay = \"{u}\": remove packet_tx"
                ),
            ),
            (Some(b), None) => tracing::warn!(
                "{key} is deprecated: write underlay = \"{}\" instead",
                if b { "packet" } else { "raw" }
            ),
            (None, _) => {}
        }
    }
    if let Some(n) = s
        .get("busy_poll_us")
        .and_then(|kv| number(p, kv, 0, MAX_BUSY_POLL_US.into(), " (µs)"))
    {
        d.busy_poll_us = n;
    }
    if let Some(n) = s
        .get("poll_interval_us")
        .and_then(|kv| number(p, kv, 0, MAX_POLL_INTERVAL_US.into(), " (µs)"))
    {
        d.poll_interval_us = n;
    }
    if let Some(n) = s
        .get("poll_quiet_us")
        .and_then(|kv| number(p, kv, 0, MAX_POLL_QUIET_US.into(), " (µs)"))
    {
        d.poll_quiet_us = n;
    }
    s.finish(p);
    d
}

fn routing(file: &Table, p: &mut Problems) -> RoutingSection {
    let s = Section::of(file, "routing", &["table", "listen_buffer"], p);
    let mut r = RoutingSection::default();
    if let Some((key, v)) = s.get("table") {
        // 0 is "unspecified", 255 the local table (the kernel's own).
        match number::<u32>(p, (key.clone(), v), 1, i64::from(u32::MAX), "") {
            Some(255) => p.push(
                key,
                "255 is the kernel's local table, not one for tunl's routes",
            ),
            Some(t) => r.table = t,
            None => {}
        }
    }
    if let Some(n) = s
        .get("listen_buffer")
        .and_then(|kv| number(p, kv, 1, i64::from(i32::MAX), " (bytes)"))
    {
        r.listen_buffer = n;
    }
    s.finish(p);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match read(text, Path::new("t.toml")) {
            Ok((_, _, p)) => p.0.iter().map(ToString::to_string).collect(),
            Err(e) => panic!("not a read problem: {e}"),
        }
    }

    const LOCAL: &str = "[tunnel]\nlocal = \"172.16.35.4\"\n";

    #[test]
    fn type_errors_name_the_key_and_the_range_in_words() {
        let cases = [
            (
                "mtu = \"abc\"",
                "tunnel.mtu: expected a number 68..=65515, found \"abc\"",
            ),
            (
                "mtu = 70000",
                "tunnel.mtu: expected a number 68..=65515, found 70000",
            ),
            (
                "mtu = 1480.0",
                "tunnel.mtu: expected a number 68..=65515, found 1480.0",
            ),
            (
                "ttl = 0",
                "tunnel.ttl: expected \"inherit\" or a number 1..=255, found 0",
            ),
            (
                "ttl = \"always\"",
                "tunnel.ttl: expected \"inherit\" or a number 1..=255, found \"always\"",
            ),
            (
                "pmtudisc = \"yes\"",
                "tunnel.pmtudisc: expected true or false, found \"yes\"",
            ),
            (
                "blocks = \"10.20.42.0/26\"",
                "tunnel.blocks: expected a list of IPv4 prefixes (e.g. [\"10.20.42.0/26\"]), found \"10.20.42.0/26\"",
            ),
            ("name = 7", "tunnel.name: expected a device name, found 7"),
        ];
        for (line, want) in cases {
            assert_eq!(problems(&format!("{LOCAL}{line}\n")), [want], "{line}");
        }
        assert_eq!(
            problems("[tunnel]\nlocal = \"172.16.35\"\n"),
            ["tunnel.local: expected an IPv4 address (e.g. \"172.16.35.4\"), found \"172.16.35\""]
        );
        assert_eq!(
            problems(&format!(
                "{LOCAL}[dataplane]\nworkers = 0\nicmp_rate = -1\n"
            )),
            [
                "dataplane.workers: expected a number 1..=64, found 0",
                "dataplane.icmp_rate: expected a number of at least 1 (per second), found -1",
            ]
        );
        assert_eq!(
            problems(&format!(
                "{LOCAL}persist = 1\n[routing]\ntable = 255\nlisten_buffer = 0\n"
            )),
            [
                "tunnel.persist: expected true or false, found 1",
                "routing.table: 255 is the kernel's local table, not one for tunl's routes",
                "routing.listen_buffer: expected a number 1..=2147483647 (bytes), found 0",
            ]
        );
        assert_eq!(
            problems(&format!("{LOCAL}[routing]\ntable = 0\n")),
            ["routing.table: expected a number of at least 1, found 0"]
        );
        assert_eq!(
            problems(&format!("{LOCAL}[metrics]\nlisten = \"localhost\"\n")),
            [
                "metrics.listen: expected an address and port (e.g. \"127.0.0.1:9099\"), found \"localhost\""
            ]
        );
    }

    #[test]
    fn a_prefix_needs_its_length() {
        let route = |prefix: &str| {
            format!("{LOCAL}[[route]]\nprefix = \"{prefix}\"\nvia = \"172.16.36.5\"\n")
        };
        assert_eq!(
            problems(&route("10.20.105.192")),
            [
                "route[0].prefix: \"10.20.105.192\" has no prefix length: write 10.20.105.192/32 \
              for one address, or the block's length (e.g. 10.20.105.192/26)"
            ]
        );
        assert_eq!(
            problems(&route("10.20.105.192/33")),
            [
                "route[0].prefix: \"10.20.105.192/33\" is not an IPv4 prefix (ADDRESS/LENGTH, the length 0..=32)"
            ]
        );
        assert!(problems(&route("10.20.105.192/26")).is_empty());
        assert_eq!(
            problems(&format!(
                "{LOCAL}blocks = [\"10.20.42.0/26\", \"10.20.43.0\"]\n[security]\nallow = [\"172.16.0.1\"]\n"
            ))
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect::<Vec<_>>(),
            ["tunnel.blocks[1]", "security.allow[0]"]
        );
    }

    #[test]
    fn unknown_and_missing_keys() {
        assert_eq!(
            problems(&format!("{LOCAL}mut = 1400\n")),
            [
                "tunnel.mut: unknown key (known: name, local, mtu, address, ttl, tos_inherit, \
              pmtudisc, blocks, persist); did you mean `mtu`?"
            ]
        );
        assert_eq!(
            problems(&format!("{LOCAL}[securty]\nallow = []\n")),
            [
                "securty: unknown section (known: [tunnel], [[route]], [security], [control], \
              [metrics], [dataplane], [routing]); did you mean `security`?"
            ]
        );
        assert_eq!(
            problems("[tunnel]\nname = \"tunl0\"\n"),
            [
                "tunnel.local: required: this node's underlay address, the outer source (e.g. local = \"172.16.35.4\")"
            ]
        );
        assert_eq!(
            problems("")[0],
            "[tunnel]: required: the [tunnel] section, with at least `local` (this node's underlay address)"
        );
        assert_eq!(problems("").len(), 1, "the section holds its keys");
        assert_eq!(
            problems(&format!(
                "{LOCAL}[[route]]\nvia = \"172.16.36.5\"\nnext = 1\n"
            )),
            [
                "route[0].prefix: required: the remote block (e.g. prefix = \"10.20.105.192/26\")",
                "route[0].next: unknown key (known: prefix, via)",
            ]
        );
        assert_eq!(
            problems("tunnel = 3\n"),
            ["[tunnel]: expected a section ([tunnel] and its keys), found 3"]
        );
    }

    #[test]
    fn a_route_with_a_bad_field_is_left_out_and_the_others_keep_their_index() {
        let text = format!(
            "{LOCAL}[[route]]\nprefix = \"10.1.0.0/26\"\nvia = \"bad\"\n\
             [[route]]\nprefix = \"10.2.0.0/26\"\nvia = \"172.16.36.5\"\n"
        );
        let (config, keys, _) = read(&text, Path::new("t.toml")).unwrap();
        assert_eq!(config.routes.len(), 1);
        assert_eq!(keys, [1]);
    }

    #[test]
    fn a_syntax_error_is_one_line_with_its_place() {
        let e = read(
            "[tunnel]\nlocal = \"172.16.35.4\"\nmtu = = 3\n",
            Path::new("t.toml"),
        )
        .err()
        .unwrap();
        let ConfigError::Syntax { line, column, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!((*line, *column), (3, 7));
        let text = e.to_string();
        assert!(
            text.starts_with("config t.toml: line 3, column 7: not TOML: "),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("mut", "mtu"), 2);
        assert_eq!(edit_distance("workers", "workers"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(suggestion("zzzzzz", ["mtu", "ttl"].into_iter()), "");
    }
}
