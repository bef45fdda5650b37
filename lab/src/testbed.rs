//! A testbed: a [`crate::topology`] cluster with a tunl daemon on every node.
//!
//! [`TunlCluster`] builds a [`Cluster`] without an overlay, writes one config
//! per node (its block, the routes to every other node's block), starts
//! `tunl run` in each node namespace and waits until every daemon has
//! installed its routes. The end-to-end tests, `tunl lab` and `tunl bench`
//! all run on it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;

use crate::topology::{Cluster, ClusterSpec, Node, Overlay, ProcessOutput, TopologyError};
use tunl::config::Underlay;
use tunl::daemon::ROUTE_PROTOCOL;

/// How long a daemon may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Options for every daemon of a cluster.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Dataplane worker threads per daemon.
    pub workers: usize,
    /// Use TUN offloads.
    pub offload: bool,
    /// `[dataplane] underlay`: how outer packets reach the underlay
    /// (`raw`, `packet`, `xdp`, `auto`).
    pub underlay: Underlay,
    /// `[dataplane] busy_poll_us`.
    pub busy_poll_us: u32,
    /// `[dataplane] poll_interval_us` (0: off).
    pub poll_interval_us: u32,
    /// `[dataplane] poll_quiet_us`.
    pub poll_quiet_us: u32,
    /// Set `tunnel.blocks` (the relay check).
    pub blocks: bool,
    /// Write a `[[route]]` for every other node's block into each config
    /// (`false`: the routes come from elsewhere, BIRD or `ip route`, and
    /// tunl learns them from the kernel).
    pub routes: bool,
    /// Blocks added to one node's `tunnel.blocks` (with `blocks`): `(node
    /// name, block)`, e.g. a block that moves between two nodes, given to
    /// both. (Only to its owners: tunl refuses packets from other nodes
    /// whose inner source lies in its own blocks.)
    pub extra_blocks: Vec<(String, Ipv4Network)>,
    /// Extra `[security] allow` prefixes.
    pub allow: Vec<Ipv4Network>,
    /// Log filter passed as `--log`.
    pub log: String,
    /// TOML appended to every node's config (e.g. a `[metrics]` section).
    pub extra_config: String,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            workers: 1,
            offload: true,
            underlay: Underlay::DEFAULT,
            busy_poll_us: 0,
            poll_interval_us: tunl::config::DEFAULT_POLL_INTERVAL_US,
            poll_quiet_us: tunl::config::DEFAULT_POLL_QUIET_US,
            blocks: true,
            routes: true,
            extra_blocks: Vec::new(),
            allow: Vec::new(),
            log: "info".to_owned(),
            extra_config: String::new(),
        }
    }
}

/// One running daemon.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// The node it runs on.
    pub node: String,
    /// Its pid.
    pub pid: u32,
    /// Its config file.
    pub config: PathBuf,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

/// A cluster whose nodes run tunl.
pub struct TunlCluster {
    /// Always `Some` until [`TunlCluster::keep`] takes it.
    cluster: Option<Cluster>,
    dir: PathBuf,
    binary: PathBuf,
    options: DaemonOptions,
    daemons: Vec<Daemon>,
    keep_dir: bool,
}

impl std::fmt::Debug for TunlCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunlCluster")
            .field("tag", &self.cluster().tag())
            .field("dir", &self.dir)
            .field("daemons", &self.daemons)
            .finish()
    }
}

/// The config text for one node of a cluster: its underlay address, its
/// block (and the block's first address on the device, as Calico puts on
/// tunl0), and a route to every other node's block.
pub fn node_config(cluster: &Cluster, node: &Node, options: &DaemonOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# tunl config for {} (generated)", node.name);
    let _ = writeln!(
        s,
        "[tunnel]\nname = \"tunl0\"\nlocal = \"{}\"",
        node.underlay
    );
    let _ = writeln!(s, "address = \"{}/32\"", node.block.network());
    if options.blocks {
        let blocks: Vec<String> = std::iter::once(&node.block)
            .chain(
                options
                    .extra_blocks
                    .iter()
                    .filter(|(on, _)| *on == node.name)
                    .map(|(_, b)| b),
            )
            .map(|b| format!("\"{b}\""))
            .collect();
        let _ = writeln!(s, "blocks = [{}]", blocks.join(", "));
    }
    if options.routes {
        for (prefix, via) in cluster.remote_routes(&node.name) {
            let _ = writeln!(s, "\n[[route]]\nprefix = \"{prefix}\"\nvia = \"{via}\"");
        }
    }
    if !options.allow.is_empty() {
        let allow: Vec<String> = options.allow.iter().map(|a| format!("\"{a}\"")).collect();
        let _ = writeln!(s, "\n[security]\nallow = [{}]", allow.join(", "));
    }
    let _ = writeln!(
        s,
        "\n[dataplane]\nworkers = {}\noffload = {}\nunderlay = \"{}\"\nbusy_poll_us = {}\n\
         poll_interval_us = {}\npoll_quiet_us = {}",
        options.workers,
        options.offload,
        options.underlay,
        options.busy_poll_us,
        options.poll_interval_us,
        options.poll_quiet_us
    );
    let socket = control_socket(cluster, &node.name);
    let _ = writeln!(s, "\n[control]\nsocket = \"{}\"", socket.display());
    s.push_str(&options.extra_config);
    s
}

/// The control socket of the daemon on `node`: in the cluster's folder, so
/// clusters side by side never share one.
pub fn control_socket(cluster: &Cluster, node: &str) -> PathBuf {
    cluster_dir(cluster).join(format!("{node}.sock"))
}

fn cluster_dir(cluster: &Cluster) -> PathBuf {
    std::env::temp_dir().join(format!("tunl-{}", cluster.tag()))
}

fn not_found(kind: &'static str, name: &str) -> TopologyError {
    TopologyError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> TopologyError {
    move |source| TopologyError::Io { context, source }
}

impl TunlCluster {
    /// Builds the cluster (its overlay is forced to [`Overlay::None`]) and
    /// starts `binary run` on every node.
    pub fn start(
        spec: ClusterSpec,
        binary: &Path,
        options: DaemonOptions,
    ) -> Result<TunlCluster, TopologyError> {
        let cluster = Cluster::build(spec.with_overlay(Overlay::None))?;
        let dir = cluster_dir(&cluster);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut tc = TunlCluster {
            cluster: Some(cluster),
            dir,
            binary: binary.to_owned(),
            options,
            daemons: Vec::new(),
            keep_dir: false,
        };
        let names: Vec<String> = tc
            .cluster()
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        for name in &names {
            let text = {
                let node = tc.node(name)?;
                node_config(tc.cluster(), node, &tc.options)
            };
            let config = tc.dir.join(format!("{name}.toml"));
            std::fs::write(&config, text)
                .map_err(io_err(format!("writing {}", config.display())))?;
            tc.spawn_daemon(name, config)?;
        }
        for name in &names {
            tc.wait_ready(name)?;
        }
        Ok(tc)
    }

    fn node(&self, name: &str) -> Result<&Node, TopologyError> {
        self.cluster()
            .node(name)
            .ok_or_else(|| not_found("node", name))
    }

    fn spawn_daemon(&mut self, node: &str, config: PathBuf) -> Result<u32, TopologyError> {
        let log = self.dir.join(format!("{node}.log"));
        let binary = self.binary.to_string_lossy().into_owned();
        let config_arg = config.to_string_lossy().into_owned();
        let pid = self.cluster().spawn(
            node,
            &[
                &binary,
                "--log",
                &self.options.log,
                "run",
                "--config",
                &config_arg,
            ],
            ProcessOutput::File(log.clone()),
        )?;
        self.daemons.retain(|d| d.node != node);
        self.daemons.push(Daemon {
            node: node.to_owned(),
            pid,
            config,
            log,
        });
        Ok(pid)
    }

    /// Starts the daemon of `node` again (after [`TunlCluster::stop`]) and
    /// waits until it is up.
    pub fn restart(&mut self, node: &str) -> Result<u32, TopologyError> {
        let config = self.daemon(node)?.config.clone();
        let pid = self.spawn_daemon(node, config)?;
        self.wait_ready(node)?;
        Ok(pid)
    }

    /// Waits until the daemon on `node` has its device up and its config's
    /// routes in the kernel; fails with its log if it exits first.
    pub fn wait_ready(&self, node: &str) -> Result<(), TopologyError> {
        let daemon = self.daemon(node)?;
        let expected = if self.options.routes {
            self.cluster().remote_routes(node).len()
        } else {
            0
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let proto = ROUTE_PROTOCOL.to_string();
        loop {
            if let Some(status) = self.cluster().try_wait(daemon.pid)? {
                return Err(TopologyError::Command {
                    command: format!("tunl run (on {node})"),
                    status,
                    stderr: self.log(node),
                });
            }
            let link = self
                .cluster()
                .exec(node, &["ip", "-o", "link", "show", "tunl0"])?;
            let routes = self
                .cluster()
                .exec(node, &["ip", "-o", "route", "show", "proto", &proto])?;
            let up = link.status.success() && String::from_utf8_lossy(&link.stdout).contains(",UP");
            let n = String::from_utf8_lossy(&routes.stdout).lines().count();
            // The device persists across restarts, up, maybe with routes:
            // the daemon is ready once its control socket answers (it
            // serves only after its start is done).
            if up && n >= expected && self.answers(node) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TopologyError::Timeout(format!(
                    "tunl on {node} not ready after {START_TIMEOUT:?}: {}",
                    self.log(node)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the daemon on `node` answers `status` on its control socket.
    fn answers(&self, node: &str) -> bool {
        let socket = self.control_socket(node);
        tunl::control::Client::connect(&socket)
            .and_then(|mut c| c.call::<tunl::control::Status>(&tunl::control::Request::Status {}))
            .is_ok()
    }

    /// The control socket of the daemon on `node`.
    pub fn control_socket(&self, node: &str) -> PathBuf {
        control_socket(self.cluster(), node)
    }

    /// The cluster underneath.
    pub fn cluster(&self) -> &Cluster {
        self.cluster
            .as_ref()
            .expect("the cluster is only taken by keep(), which consumes self")
    }

    /// The daemon running on `node`.
    pub fn daemon(&self, node: &str) -> Result<&Daemon, TopologyError> {
        self.daemons
            .iter()
            .find(|d| d.node == node)
            .ok_or_else(|| not_found("daemon on node", node))
    }

    /// Every daemon.
    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }

    /// The folder holding configs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log of the daemon on `node` so far.
    pub fn log(&self, node: &str) -> String {
        self.daemons
            .iter()
            .find(|d| d.node == node)
            .and_then(|d| std::fs::read_to_string(&d.log).ok())
            .unwrap_or_default()
    }

    /// Replaces the config file of `node` (apply it with [`TunlCluster::reload`]).
    pub fn write_config(&self, node: &str, text: &str) -> Result<(), TopologyError> {
        let path = &self.daemon(node)?.config;
        std::fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))
    }

    /// The config file text of `node`.
    pub fn config_text(&self, node: &str) -> Result<String, TopologyError> {
        let path = &self.daemon(node)?.config;
        std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))
    }

    /// Sends SIGHUP to the daemon on `node`.
    pub fn reload(&self, node: &str) -> Result<(), TopologyError> {
        self.cluster().signal(self.daemon(node)?.pid, libc::SIGHUP)
    }

    /// Stops the daemon on `node` with SIGTERM and returns its exit status.
    pub fn stop(&self, node: &str) -> Result<std::process::ExitStatus, TopologyError> {
        self.cluster().terminate(self.daemon(node)?.pid)
    }

    /// Kills the daemon on `node` with SIGKILL (no cleanup) and reaps it.
    pub fn kill(&self, node: &str) -> Result<(), TopologyError> {
        let pid = self.daemon(node)?.pid;
        self.cluster().signal(pid, libc::SIGKILL)?;
        let _ = self.cluster().wait_timeout(pid, Duration::from_secs(5))?;
        Ok(())
    }

    /// The next hops tunl routes to from `node`, as the kernel shows them
    /// (`ip route show proto 116`).
    pub fn kernel_routes(&self, node: &str) -> Result<Vec<String>, TopologyError> {
        let out = self.cluster().exec_ok(
            node,
            &["ip", "route", "show", "proto", &ROUTE_PROTOCOL.to_string()],
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Leaves the cluster, its daemons and its folder in place and returns
    /// the tag (see [`crate::topology::teardown`]).
    pub fn keep(mut self) -> (String, PathBuf) {
        self.keep_dir = true;
        let dir = self.dir.clone();
        let tag = self.cluster.take().map(Cluster::keep).unwrap_or_default();
        (tag, dir)
    }

    /// A pod's address by name.
    pub fn pod_ip(&self, pod: &str) -> Result<Ipv4Addr, TopologyError> {
        self.cluster()
            .pod(pod)
            .map(|p| p.ip)
            .ok_or_else(|| not_found("pod", pod))
    }
}

/// Runs `f` on a new thread that has entered the network namespace `netns`
/// (a name under /run/netns, as `ip netns add` makes): sockets it opens
/// belong to that namespace. The calling thread's namespace is untouched.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let path = Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for TunlCluster {
    fn drop(&mut self) {
        // Stop daemons gracefully first, so they remove their routes and
        // devices; the cluster's own drop kills whatever is left.
        let Some(cluster) = &self.cluster else {
            return; // kept
        };
        for d in &self.daemons {
            let _ = cluster.terminate(d.pid);
        }
        if !self.keep_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
