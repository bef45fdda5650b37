//! End to end with `[dataplane] busy_poll_us`: the workers keep polling for
//! that long after their last packet instead of sleeping, then sleep again.
//! Traffic crosses intact (ping TTL 62, 64 MiB of TCP byte for byte), a
//! packet handled while polling restarts the window (the worker still polls
//! after the first packet's window is over), and the worker sleeps again
//! once the last window has passed. The daemon's `busy_polls` counter (polls
//! without sleep inside a window) says which: it grows while a worker
//! polls and stands still while it sleeps. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::{logs, stats, tcp_transfer, tunl_bin};
use tunl_lab::testbed::{DaemonOptions, TunlCluster};
use tunl_lab::topology::ClusterSpec;

const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";
const NODE: &str = "node1.sit";
/// The longest window the config accepts: room for the steps below on a
/// shared machine.
const WINDOW_US: u32 = 1_000_000;

/// How much `busy_polls` of the daemon on [`NODE`] grows in `d`.
fn polls_during(tc: &TunlCluster, d: Duration) -> u64 {
    let count = || stats(tc, NODE).counter("busy_polls").expect("busy_polls");
    let before = count();
    std::thread::sleep(d);
    count() - before
}

#[test]
#[ignore = "needs root: scripts/test"]
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
    let spinning = polls_during(&tc, Duration::from_millis(400));
    assert!(
        b_sent.elapsed() < window,
        "the measurement must end inside the second ping's window"
    );
    // Once that window is over (and nothing else arrived) it sleeps again.
    std::thread::sleep(window);
    let idle = polls_during(&tc, Duration::from_millis(400));
    assert!(
        spinning > 0,
        "no busy polls in 400 ms inside a window: not polling\n{}",
        logs(&tc)
    );
    assert_eq!(
        idle, 0,
        "{idle} busy polls in 400 ms past the last window: still polling (inside one: {spinning})"
    );
}
