//! The processes that run inside a cluster's namespaces: spawning and
//! adopting them, signalling, waiting for and ending them (SIGTERM, a grace
//! period, SIGKILL), and the cleanup that ends them and deletes the
//! namespaces when the [`Cluster`] is dropped or a kept cluster is torn
//! down.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::{Cluster, TopologyError, checked, command_line, ip, ns_name};

/// Directory where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// How long a process gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_millis(1000);

/// Where a spawned process's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProcessOutput {
    /// Discarded.
    #[default]
    Null,
    /// This process's stdout and stderr.
    Inherit,
    /// Appended (both streams) to this file, created if missing.
    File(PathBuf),
    /// Pipes; read them from the [`Child`] taken with [`Cluster::take_child`].
    Piped,
}

impl Cluster {
    /// Tracks a process started from [`Cluster::command`]: the cluster kills
    /// it on drop. Returns its pid.
    pub fn adopt(&self, child: Child) -> u32 {
        let pid = child.id();
        self.lock_children().push(child);
        pid
    }

    /// Starts `args` in a namespace of the cluster and returns its pid. The
    /// process is tracked: the cluster kills it on drop. Its stdin is null.
    pub fn spawn(
        &self,
        netns: &str,
        args: &[&str],
        output: ProcessOutput,
    ) -> Result<u32, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null());
        match &output {
            ProcessOutput::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            ProcessOutput::Inherit => {}
            ProcessOutput::Piped => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            ProcessOutput::File(path) => {
                let file = open_log(path)?;
                let err = file.try_clone().map_err(|source| TopologyError::Io {
                    context: format!("duplicating log file {}", path.display()),
                    source,
                })?;
                cmd.stdout(file).stderr(err);
            }
        }
        // `ip netns exec` execs the command itself, so the pid is the
        // command's.
        let child = cmd.spawn().map_err(|source| TopologyError::Spawn {
            command: command_line(&cmd),
            source,
        })?;
        let pid = child.id();
        debug!(pid, netns = ns, command = ?args, "spawned");
        self.lock_children().push(child);
        Ok(pid)
    }

    /// Pids of the tracked processes (spawned, not yet reaped or taken).
    pub fn pids(&self) -> Vec<u32> {
        self.lock_children().iter().map(Child::id).collect()
    }

    /// Takes a spawned process out of the cluster's care, e.g. to read its
    /// pipes. The caller must then end and reap it.
    pub fn take_child(&self, pid: u32) -> Option<Child> {
        let mut children = self.lock_children();
        let i = children.iter().position(|c| c.id() == pid)?;
        Some(children.swap_remove(i))
    }

    /// The exit status of a spawned process if it has exited (it is then
    /// reaped and no longer tracked), `None` if it still runs.
    pub fn try_wait(&self, pid: u32) -> Result<Option<ExitStatus>, TopologyError> {
        let mut children = self.lock_children();
        let i = children
            .iter()
            .position(|c| c.id() == pid)
            .ok_or_else(|| not_found_pid(pid))?;
        let status = children[i].try_wait().map_err(|source| TopologyError::Io {
            context: format!("waiting for pid {pid}"),
            source,
        })?;
        if status.is_some() {
            // Already reaped: `wait` returns the cached status at once.
            let _ = children.swap_remove(i).wait();
        }
        Ok(status)
    }

    /// Waits up to `timeout` for a spawned process to exit; `None` if it
    /// still runs then.
    pub fn wait_timeout(
        &self,
        pid: u32,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, TopologyError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait(pid)? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (e.g. `libc::SIGHUP`) to a spawned process.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<(), TopologyError> {
        if !self.lock_children().iter().any(|c| c.id() == pid) {
            return Err(not_found_pid(pid));
        }
        send_signal(pid, signal)
    }

    /// Ends a spawned process: SIGTERM, then SIGKILL if it has not exited
    /// after a short grace period. Returns its exit status.
    pub fn terminate(&self, pid: u32) -> Result<ExitStatus, TopologyError> {
        let mut child = self.take_child(pid).ok_or_else(|| not_found_pid(pid))?;
        stop_child(&mut child).map_err(|source| TopologyError::Io {
            context: format!("ending pid {pid}"),
            source,
        })
    }

    /// Disarms cleanup and returns the tag: the namespaces and the processes
    /// stay (for `tunl lab --keep`); [`teardown`] removes them later.
    pub fn keep(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.tag)
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Kills the tracked processes, then deletes the namespaces.
    fn cleanup(&mut self) {
        let mut children = std::mem::take(&mut *self.lock_children());
        for child in &children {
            let _ = send_signal(child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline {
            children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
            if children.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        for child in &mut children {
            warn!(pid = child.id(), "process ignored SIGTERM; killing");
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = remove_netns(ns) {
                warn!(netns = ns, error = %e, "could not remove namespace");
            }
        }
        self.namespaces.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.armed {
            self.cleanup();
        }
    }
}

/// Ends a process of the cluster when dropped (used for iperf3 servers).
pub(super) struct Terminator<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) pid: u32,
}

impl Drop for Terminator<'_> {
    fn drop(&mut self) {
        // Not found means it already exited and was reaped.
        let _ = self.cluster.terminate(self.pid);
    }
}

/// Namespaces that carry `tag` (`tunl-<tag>-*`), sorted.
pub fn tagged_namespaces(tag: &str) -> Result<Vec<String>, TopologyError> {
    let prefix = ns_name(tag, "");
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TopologyError::Io {
                context: format!("listing {NETNS_DIR}"),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Removes a kept cluster (see [`Cluster::keep`]) by its tag: ends every
/// process inside its namespaces (SIGTERM, then SIGKILL) and deletes the
/// namespaces. Returns how many namespaces were deleted.
pub fn teardown(tag: &str) -> Result<usize, TopologyError> {
    let names = tagged_namespaces(tag)?;
    for ns in &names {
        remove_netns(ns)?;
    }
    Ok(names.len())
}

/// Ends the processes inside a namespace and deletes it.
fn remove_netns(ns: &str) -> Result<(), TopologyError> {
    let pids = checked(Command::new("ip").args(["netns", "pids", ns])).unwrap_or_default();
    let pids: Vec<u32> = pids
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != std::process::id())
        .collect();
    for &pid in &pids {
        let _ = send_signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + KILL_GRACE;
    let mut alive = pids;
    while !alive.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        alive.retain(|&p| process_alive(p));
    }
    for &pid in &alive {
        warn!(pid, netns = ns, "process ignored SIGTERM; killing");
        let _ = send_signal(pid, libc::SIGKILL);
    }
    ip(&["netns", "del", ns])
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// SIGTERM, a grace period, then SIGKILL; reaps the child.
fn stop_child(child: &mut Child) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let _ = send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()
}

/// Sends `signal` (a number such as `libc::SIGTERM`; 0 only checks that the
/// process exists) to the process `pid` with kill(2).
fn send_signal(pid: u32, signal: i32) -> Result<(), TopologyError> {
    let failed = |source: io::Error| TopologyError::Io {
        context: format!("sending signal {signal} to pid {pid}"),
        source,
    };
    // 0, or a pid that wraps to a negative pid_t, would name a process group.
    let pid = i32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| failed(io::ErrorKind::InvalidInput.into()))?;
    let signal = match signal {
        0 => None,
        n => Some(Signal::try_from(n).map_err(|e| failed(e.into()))?),
    };
    kill(pid, signal).map_err(|e| failed(e.into()))
}

fn open_log(path: &Path) -> Result<File, TopologyError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| TopologyError::Io {
            context: format!("opening log file {}", path.display()),
            source,
        })
}

fn not_found_pid(pid: u32) -> TopologyError {
    TopologyError::NotFound {
        kind: "process",
        name: pid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn send_signal_reaches_the_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        send_signal(child.id(), 0).expect("signal 0 finds a live process");
        send_signal(child.id(), libc::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
        // Reaped: no such process any more.
        assert!(send_signal(child.id(), 0).is_err());
    }

    #[test]
    fn send_signal_never_names_a_process_group() {
        // Signal 0 only probes, so a broken check cannot hurt the test run.
        for pid in [0, u32::MAX, 1 << 31] {
            let err = send_signal(pid, 0).unwrap_err();
            assert!(
                matches!(&err, TopologyError::Io { source, .. }
                    if source.kind() == io::ErrorKind::InvalidInput),
                "{pid}: {err}"
            );
        }
        assert!(send_signal(std::process::id(), 1000).is_err());
    }
}
