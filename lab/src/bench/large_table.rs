//! What a large route table costs: a daemon started once per run with a
//! config of [`LARGE_TABLE_ROUTES`] routes (`--table-routes`), timed until every route is in
//! the kernel, its memory read from `/proc/PID/status`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BenchError, status_mib, write_file};
use crate::testbed::{DaemonOptions, node_config};
use crate::topology::{Cluster, ClusterSpec, ProcessOutput};
use tunl::daemon::ROUTE_PROTOCOL;

/// The node whose daemon gets the 10k-route config.
const ROUTES_NODE: &str = "node1.sit";
/// Routes in the large-table config.
pub const LARGE_TABLE_ROUTES: usize = 10_000;
/// How long the large-table daemon may take to install its routes.
const LARGE_TABLE_TIMEOUT: Duration = Duration::from_secs(180);

/// A daemon started with a config of [`LARGE_TABLE_ROUTES`] routes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LargeTable {
    /// Routes in the config (and installed in the kernel).
    pub routes: usize,
    /// Resident memory once every route is installed, MiB.
    pub vm_rss_mib: f64,
    /// Peak resident memory by then, MiB.
    pub vm_hwm_mib: f64,
    /// Seconds from start until every route was in the kernel.
    pub startup_seconds: f64,
}

/// The config of the large-table daemon: the seed config of its node plus
/// routes for `/26` blocks from 10.64.0.0, `routes` in all, via the other
/// node.
fn large_table_config(cluster: &Cluster, routes: usize) -> Result<String, BenchError> {
    let node = cluster
        .node(ROUTES_NODE)
        .ok_or_else(|| BenchError::Measurement(format!("no node {ROUTES_NODE}")))?;
    let options = DaemonOptions {
        log: "warn".to_owned(),
        ..DaemonOptions::default()
    };
    let remote = cluster.remote_routes(ROUTES_NODE);
    let via = remote
        .first()
        .map(|(_, via)| *via)
        .ok_or_else(|| BenchError::Measurement("no remote node".into()))?;
    let mut text = node_config(cluster, node, &options);
    text.push_str(&extra_routes(via, routes.saturating_sub(remote.len())));
    Ok(text)
}

/// `count` `[[route]]` tables for consecutive /26 blocks from 10.64.0.0 via
/// `via`.
fn extra_routes(via: Ipv4Addr, count: usize) -> String {
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    let mut text = String::new();
    for i in 0..count as u32 {
        let prefix = Ipv4Addr::from(base + i * 64);
        let _ = write!(
            text,
            "\n[[route]]\nprefix = \"{prefix}/26\"\nvia = \"{via}\"\n"
        );
    }
    text
}

/// Starts a daemon with `count` routes on a fresh cluster,
/// waits until every route is in the kernel, reads its memory, stops it and
/// removes everything.
pub(super) fn measure_large_table(binary: &Path, count: usize) -> Result<LargeTable, BenchError> {
    let context = format!("daemon with {count} routes");
    let context = context.as_str();
    let topo = |what: &str| BenchError::topology(format!("{context}: {what}"));
    let cluster = Cluster::build(ClusterSpec::seed()).map_err(topo("building the cluster"))?;
    let dir = tempdir_for(cluster.tag());
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Write {
        path: dir.clone(),
        source,
    })?;
    let _cleanup = RemoveDir(dir.clone());
    let config = dir.join("large.toml");
    write_file(&config, &large_table_config(&cluster, count)?)?;
    let log = dir.join("large.log");
    let started = Instant::now();
    let pid = cluster
        .spawn(
            ROUTES_NODE,
            &[
                &binary.to_string_lossy(),
                "--log",
                "warn",
                "run",
                "--config",
                &config.to_string_lossy(),
            ],
            ProcessOutput::File(log.clone()),
        )
        .map_err(topo("starting the daemon"))?;
    let proto = ROUTE_PROTOCOL.to_string();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let startup = loop {
        if let Some(status) = cluster.try_wait(pid).map_err(topo("waiting"))? {
            return Err(BenchError::Measurement(format!(
                "{context}: exited ({status}) before installing its routes:\n{}",
                read_log()
            )));
        }
        let routes = cluster
            .exec_ok(ROUTES_NODE, &["ip", "-o", "route", "show", "proto", &proto])
            .map_err(topo("listing routes"))?;
        if routes.lines().count() >= count {
            break started.elapsed();
        }
        if started.elapsed() > LARGE_TABLE_TIMEOUT {
            return Err(BenchError::Measurement(format!(
                "{context}: routes not installed after {LARGE_TABLE_TIMEOUT:?}:\n{}",
                read_log()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let start-up allocations settle before reading.
    std::thread::sleep(Duration::from_millis(300));
    let rss = status_mib(pid, "VmRSS");
    let hwm = status_mib(pid, "VmHWM");
    // SIGTERM lets it remove its routes; the cluster's drop removes the rest.
    let _ = cluster.signal(pid, libc::SIGTERM);
    let _ = cluster.wait_timeout(pid, Duration::from_secs(30));
    let (Some(vm_rss_mib), Some(vm_hwm_mib)) = (rss, hwm) else {
        return Err(BenchError::Measurement(format!(
            "{context}: could not read /proc/{pid}/status"
        )));
    };
    Ok(LargeTable {
        routes: count,
        vm_rss_mib,
        vm_hwm_mib,
        startup_seconds: startup.as_secs_f64(),
    })
}

fn tempdir_for(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tunl-bench-{tag}"))
}

/// Removes a folder when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_table_routes_parse() {
        let base = "[tunnel]\nlocal = \"172.16.35.4\"\n";
        let text = format!(
            "{base}{}",
            extra_routes(Ipv4Addr::new(172, 16, 36, 5), LARGE_TABLE_ROUTES)
        );
        let config = tunl::config::Config::parse(&text, Path::new("large.toml")).unwrap();
        assert_eq!(config.routes.len(), LARGE_TABLE_ROUTES);
        let last = config.routes.last().unwrap();
        assert_eq!(last.prefix.to_string(), "10.73.195.192/26");
    }
}
