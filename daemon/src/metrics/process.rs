//! The `process_*` metrics, as other Prometheus clients name them, read from
//! `/proc/self` at each scrape.
//!
//! Only `/proc/self` is read (not `/proc/stat` or `/proc/uptime`), so this
//! works under the unit's `ProcSubset=pid`: the start time comes from the
//! process's start in clock ticks since boot and the boot time from
//! `CLOCK_REALTIME - CLOCK_BOOTTIME`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};
use nix::unistd::{SysconfVar, sysconf};

use super::exposition::{Family, Kind, Value};

/// What `/proc/self` says of the process; a field is `None` when its file
/// could not be read or parsed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: Option<u64>,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

/// Fields of `/proc/self/stat` after the command name, by their number in
/// proc(5) (field 3, `state`, is index 0).
fn stat_field(fields: &[&str], number: usize) -> Option<u64> {
    fields.get(number.checked_sub(3)?)?.parse().ok()
}

/// Parses `/proc/PID/stat`: CPU ticks (utime + stime), start time in ticks
/// since boot, virtual size in bytes and resident pages.
fn parse_stat(text: &str) -> Option<(u64, u64, u64, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses itself: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = stat_field(&fields, 14)? + stat_field(&fields, 15)?;
    Some((
        ticks,
        stat_field(&fields, 22)?,
        stat_field(&fields, 23)?,
        stat_field(&fields, 24)?,
    ))
}

/// The soft `Max open files` limit from `/proc/PID/limits`.
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    // "unlimited" has no number: no sample.
    soft.parse().ok()
}

fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

impl ProcessStats {
    /// Reads the calling process's stats from `/proc/self`.
    pub fn read() -> ProcessStats {
        Self::read_from(Path::new("/proc/self"))
    }

    fn read_from(proc: &Path) -> ProcessStats {
        let ticks_per_second = sysconf(SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .map(|t| t as f64);
        let page_size = sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok());
        let stat = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t));
        let mut stats = ProcessStats {
            open_fds: std::fs::read_dir(proc.join("fd"))
                .ok()
                .map(|d| d.count() as u64),
            max_fds: std::fs::read_to_string(proc.join("limits"))
                .ok()
                .and_then(|t| parse_max_fds(&t)),
            ..ProcessStats::default()
        };
        if let Some((cpu_ticks, start_ticks, vsize, rss_pages)) = stat {
            stats.virtual_bytes = Some(vsize);
            stats.resident_bytes = page_size.map(|p| rss_pages.saturating_mul(p));
            if let Some(hz) = ticks_per_second {
                stats.cpu_seconds = Some(cpu_ticks as f64 / hz);
                stats.start_time_seconds =
                    boot_time_seconds().map(|boot| boot + start_ticks as f64 / hz);
            }
        }
        stats
    }

    /// The `process_*` families; a stat that could not be read has none.
    pub fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        let mut add = |name: &str, kind: Kind, help: &str, value: Option<Value>| {
            if let Some(value) = value {
                out.push(Family::new(name, kind, help).with(vec![], value));
            }
        };
        add(
            "process_cpu_seconds",
            Kind::Counter,
            "Total user and system CPU time spent in seconds",
            self.cpu_seconds.map(Value::Float),
        );
        add(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes",
            self.resident_bytes.map(Value::Int),
        );
        add(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes",
            self.virtual_bytes.map(Value::Int),
        );
        add(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds",
            self.start_time_seconds.map(Value::Float),
        );
        add(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors",
            self.open_fds.map(Value::Int),
        );
        add(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors",
            self.max_fds.map(Value::Int),
        );
        out
    }
}

/// When the system booted, in seconds since the Unix epoch: the wall clock
/// less the time since boot (suspend included, as the kernel counts a
/// process's start).
fn boot_time_seconds() -> Option<f64> {
    let since_boot = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let up = std::time::Duration::from(since_boot);
    Some(seconds(now) - seconds(up))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // proc(5) fields 1..=24, the name holding spaces and a ')'.
        let text = "4242 (tunl (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 1234567 987654321 2048 18446744073709551615";
        assert_eq!(parse_stat(text), Some((300, 1234567, 987654321, 2048)));
        assert_eq!(parse_stat("4242 (tunl) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_soft_fd_limit_is_read() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            65536                524288               files     \n";
        assert_eq!(parse_max_fds(text), Some(65536));
        assert_eq!(
            parse_max_fds("Max open files            unlimited            unlimited"),
            None
        );
    }

    #[test]
    fn this_process_has_every_stat() {
        let s = ProcessStats::read();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time_seconds.unwrap();
        // Started before now, and not before the year 2020.
        assert!(start <= now + 1.0 && start > 1_577_836_800.0, "{s:?}");
        assert!(s.cpu_seconds.unwrap() >= 0.0);
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.virtual_bytes.unwrap() >= s.resident_bytes.unwrap());
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let open = ProcessStats::read().open_fds.unwrap();
        assert!(open >= 1, "the file above is open: {open}");
        drop(f);
        assert!(s.max_fds.unwrap() >= open);
        let names: Vec<String> = s.families().iter().map(|f| f.name.clone()).collect();
        assert_eq!(
            names,
            [
                "process_cpu_seconds",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_start_time_seconds",
                "process_open_fds",
                "process_max_fds"
            ]
        );
    }
}
