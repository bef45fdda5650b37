//! End to end with the adaptive receive polling (`[dataplane]
//! poll_interval_us`, `poll_quiet_us`): under load a worker whose sources
//! ran dry sleeps on a short timer instead of blocking in epoll, and blocks
//! again after a quiet spell without packets. The daemon's counters say
//! which, without timing anything: `timer_polls` (timer sleeps) grows while
//! a worker polls and stands still while it blocks; `poll_blocks` counts
//! the returns to blocking. Traffic crosses intact (ping TTL 62, 64 MiB of
//! TCP byte for byte); an idle daemon, and one that only sees a lone ping,
//! never polls on the timer (the first packet after a pause wakes a blocked
//! worker, as without the timer); with `poll_interval_us = 0` the same
//! transfer takes no timer sleep at all. Needs root.

mod common;

use std::time::Duration;

use common::{logs, stats, tcp_transfer, tunl_bin};
use tunl_lab::testbed::{DaemonOptions, TunlCluster};
use tunl_lab::topology::ClusterSpec;

const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";
const NODES: [&str; 2] = ["node1.sit", "node2.perf"];
const INTERVAL_US: u32 = 50;
/// A quiet spell long enough that a shared machine's scheduling hiccups do
/// not end the polling in the middle of the transfer, short enough to wait
/// out.
const QUIET_US: u32 = 20_000;

/// `(timer_polls, poll_blocks)` summed over both daemons.
fn counts(tc: &TunlCluster) -> (u64, u64) {
    NODES.iter().fold((0, 0), |(t, b), node| {
        let s = stats(tc, node);
        (
            t + s.counter("timer_polls").expect("timer_polls"),
            b + s.counter("poll_blocks").expect("poll_blocks"),
        )
    })
}

fn start(poll_interval_us: u32) -> TunlCluster {
    TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            poll_interval_us,
            poll_quiet_us: QUIET_US,
            ..DaemonOptions::default()
        },
    )
    .expect("cluster with tunl daemons")
}

/// Waits for the quiet spell to run out (with room for a busy machine).
fn wait_quiet() {
    std::thread::sleep(Duration::from_micros(QUIET_US.into()) + Duration::from_millis(500));
}

#[test]
fn workers_poll_on_a_timer_under_load_and_block_when_idle() {
    let tc = start(INTERVAL_US);
    let to = tc.pod_ip(SIT).unwrap();
    let c = tc.cluster();
    let r = c
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62), "{}", r.raw);

    // Idle: no timer sleeps over a second.
    wait_quiet();
    let (t0, b0) = counts(&tc);
    std::thread::sleep(Duration::from_secs(1));
    let (t1, b1) = counts(&tc);
    assert_eq!(t1, t0, "timer polls while idle\n{}", logs(&tc));
    assert_eq!(b1, b0, "returns to blocking while idle");

    // A lone ping is no load: the workers stay blocked, so it is woken as
    // without the timer.
    let r = c.ping(PERF, to, 3, Duration::from_millis(100)).unwrap();
    assert_eq!(r.received, 3, "{}", r.raw);
    wait_quiet();
    let (t2, b2) = counts(&tc);
    assert_eq!(t2, t1, "lone pings started the timer polling");
    assert_eq!(b2, b1);

    // Load: the workers poll on the timer while it lasts ...
    assert_eq!(tcp_transfer(&tc, PERF, SIT, 7502, 64 << 20), 64 << 20);
    let (t3, _) = counts(&tc);
    assert!(
        t3 > t2,
        "no timer polls during a 64 MiB transfer\n{}",
        logs(&tc)
    );
    // ... and block again once the quiet spell has passed.
    wait_quiet();
    let (t4, b4) = counts(&tc);
    assert!(b4 > b2, "the workers never went back to blocking");
    std::thread::sleep(Duration::from_secs(1));
    let (t5, b5) = counts(&tc);
    assert_eq!(
        t5,
        t4,
        "timer polls a quiet spell after the transfer: still polling (during it: {})",
        t3 - t2
    );
    assert_eq!(b5, b4);
}

#[test]
fn interval_zero_never_polls_on_the_timer() {
    let tc = start(0);
    let to = tc.pod_ip(SIT).unwrap();
    tc.cluster()
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(tcp_transfer(&tc, PERF, SIT, 7503, 64 << 20), 64 << 20);
    assert_eq!(
        counts(&tc),
        (0, 0),
        "timer polling with poll_interval_us = 0"
    );
}
