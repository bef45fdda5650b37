//! CPU sampling during a measurement: jiffies of the whole machine from
//! `/proc/stat` and of the tunl daemons from `/proc/PID/stat`, taken inside
//! the transfer and turned into % of one core.

use std::time::{Duration, Instant};

/// CPU use over a window, in % of one core, and how fast a counter grew.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuUse {
    pub(super) machine_percent: f64,
    pub(super) processes_percent: f64,
    /// The growth per second of the counter given to
    /// [`with_cpu_sampling`], over the same window (`None` without one, or
    /// when it could not be read).
    pub(super) counter_per_second: Option<f64>,
}

/// Runs `f` (a measurement of `seconds`) on another thread and samples CPU
/// time meanwhile: from 0.5 s after the start to 0.25 s before the
/// expected end, inside the transfer, so tool start-up and teardown are
/// left out (for runs under 2 s: around the whole call).
/// `counter`, when it reads, is sampled at the same two instants (the
/// sending daemon's `tx_packets`, for the underlay frame rate).
pub(super) fn with_cpu_sampling<T: Send>(
    seconds: u32,
    pids: &[u32],
    counter: impl Fn() -> Option<u64>,
    f: impl FnOnce() -> T + Send,
) -> (T, Option<CpuUse>) {
    let ticks = clock_ticks();
    std::thread::scope(|s| {
        let (lead, window) = if seconds >= 2 {
            (
                Duration::from_millis(500),
                Duration::from_secs(u64::from(seconds)) - Duration::from_millis(750),
            )
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        let worker = s.spawn(f);
        std::thread::sleep(lead);
        let before = CpuSnapshot::take(pids);
        let count_before = counter();
        let t0 = Instant::now();
        let result = if window.is_zero() {
            let r = worker.join();
            (r, CpuSnapshot::take(pids), counter(), t0.elapsed())
        } else {
            std::thread::sleep(window);
            let after = CpuSnapshot::take(pids);
            let count_after = counter();
            let elapsed = t0.elapsed();
            (worker.join(), after, count_after, elapsed)
        };
        let (joined, after, count_after, elapsed) = result;
        let value = match joined {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let rate = count_before
            .zip(count_after)
            .filter(|_| !elapsed.is_zero())
            .map(|(b, a)| a.saturating_sub(b) as f64 / elapsed.as_secs_f64());
        let cpu = before
            .zip(after)
            .and_then(|(b, a)| CpuSnapshot::usage(&b, &a, elapsed, ticks))
            .map(|c| CpuUse {
                counter_per_second: rate,
                ..c
            });
        (value, cpu)
    })
}

/// Jiffies of the machine and of some processes at one moment.
#[derive(Debug, Clone)]
struct CpuSnapshot {
    busy: u64,
    total: u64,
    cores: usize,
    processes: Vec<Option<u64>>,
}

impl CpuSnapshot {
    fn take(pids: &[u32]) -> Option<CpuSnapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (busy, total, cores) = parse_proc_stat(&stat)?;
        let processes = pids
            .iter()
            .map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| parse_pid_stat_cpu(&s))
            })
            .collect();
        Some(CpuSnapshot {
            busy,
            total,
            cores,
            processes,
        })
    }

    fn usage(before: &Self, after: &Self, elapsed: Duration, ticks: f64) -> Option<CpuUse> {
        let total = after.total.checked_sub(before.total)?;
        if total == 0 || elapsed.is_zero() {
            return None;
        }
        let busy = after.busy.saturating_sub(before.busy);
        let machine_percent = busy as f64 / total as f64 * after.cores as f64 * 100.0;
        let process_ticks: u64 = before
            .processes
            .iter()
            .zip(&after.processes)
            .filter_map(|(b, a)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?)))
            .sum();
        let processes_percent = process_ticks as f64 / ticks / elapsed.as_secs_f64() * 100.0;
        Some(CpuUse {
            machine_percent,
            processes_percent,
            counter_per_second: None,
        })
    }
}

/// `(busy, total, cores)` jiffies from `/proc/stat`: the `cpu` line's
/// user..steal, busy being all but idle and iowait; cores counted from the
/// `cpuN` lines.
fn parse_proc_stat(stat: &str) -> Option<(u64, u64, usize)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1);
    Some((total - idle, total, cores))
}

/// utime + stime (jiffies, all threads) from `/proc/PID/stat`.
fn parse_pid_stat_cpu(stat: &str) -> Option<u64> {
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers() {
        let stat = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n\
                    cpu1 50 3 25 500 10 2 4 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_proc_stat(stat), Some((165, 1185, 2)));
        let pid = "1234 (tunl (x) y) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 3";
        assert_eq!(parse_pid_stat_cpu(pid), Some(290));
        let before = CpuSnapshot {
            busy: 100,
            total: 1000,
            cores: 2,
            processes: vec![Some(10), None],
        };
        let after = CpuSnapshot {
            busy: 600,
            total: 2000,
            cores: 2,
            processes: vec![Some(110), Some(5)],
        };
        let u = CpuSnapshot::usage(&before, &after, Duration::from_secs(5), 100.0).unwrap();
        assert!((u.machine_percent - 100.0).abs() < 1e-9);
        assert!((u.processes_percent - 20.0).abs() < 1e-9);
    }
}
