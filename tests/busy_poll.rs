//! End to end with `[dataplane] busy_poll_us`: the workers keep polling for
//! that long after their last packet instead of sleeping, then sleep again.
//! Traffic crosses intact (ping TTL 62, 64 MiB of TCP byte for byte), a
//! packet handled while polling restarts the window (the worker still polls
//! after the first packet's window is over), and the worker sleeps again
//! once the last window has passed. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::{logs, tcp_transfer, tunl_bin};
use tunl_lab::testbed::{DaemonOptions, TunlCluster};
use tunl_lab::topology::ClusterSpec;

const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";
/// The longest window the config accepts: long enough to measure with the
/// kernel's 10 ms CPU-time ticks on a shared machine.
const WINDOW_US: u32 = 1_000_000;

/// CPU time (user + system) of the daemon's first dataplane thread.
fn worker_cpu(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("daemon tasks");
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "tunl-dp0" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("thread stat");
        // Fields after the parenthesised name: state is field 3, utime 14,
        // stime 15.
        let rest = &stat[stat.rfind(')').expect("stat name") + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().expect("tick count"))
            .collect();
        // Linux reports these in USER_HZ ticks, 100 per second on x86 and
        // arm64.
        return Duration::from_millis((f[0] + f[1]) * 10);
    }
    panic!("no tunl-dp0 thread in daemon {pid}");
}

fn cpu_during(pid: u32, d: Duration) -> Duration {
    let before = worker_cpu(pid);
    std::thread::sleep(d);
    worker_cpu(pid) - before
}

#[test]
fn busy_polling_daemons_carry_traffic_and_go_back_to_sleep() {
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            busy_poll_us: WINDOW_US,
            ..DaemonOptions::default()
        },
    )
    .expect("cluster with busy-polling tunl daemons");
    let to = tc.pod_ip(SIT).unwrap();
    let c = tc.cluster();
    let r = c
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62), "{}", r.raw);
    assert_eq!(tcp_transfer(&tc, PERF, SIT, 7501, 64 << 20), 64 << 20);

    let pid = tc.daemon("node1.sit").unwrap().pid;
    let window = Duration::from_micros(WINDOW_US.into());
    // Quiet first: the transfer's window runs out.
    std::thread::sleep(window + Duration::from_millis(300));
    let ping = || {
        let r = c.ping(PERF, to, 1, Duration::from_millis(100)).unwrap();
        assert_eq!(r.received, 1, "{}", r.raw);
        // The reply passed the worker before ping returned.
        Instant::now()
    };
    let a = ping();
    std::thread::sleep(window * 7 / 10);
    // b's packets are handled after this instant, so its window lasts at
    // least until b_sent + window.
    let b_sent = Instant::now();
    ping();
    // Past a's window, inside b's: only a window restarted by b, a packet
    // handled while polling, keeps the worker polling now.
    let since_a = a.elapsed();
    std::thread::sleep((window * 11 / 10).saturating_sub(since_a));
    let spinning = cpu_during(pid, Duration::from_millis(400));
    assert!(
        b_sent.elapsed() < window,
        "the measurement must end inside the second ping's window"
    );
    // Once that window is over (and nothing else arrived) it sleeps again.
    std::thread::sleep(window);
    let idle = cpu_during(pid, Duration::from_millis(400));
    assert!(
        spinning >= Duration::from_millis(40),
        "worker used {spinning:?} of CPU in 400 ms after a packet: not polling"
    );
    assert!(
        idle < Duration::from_millis(40),
        "worker used {idle:?} of CPU in 400 ms while idle: still polling (spinning {spinning:?})"
    );
}
