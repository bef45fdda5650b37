//! Building clusters: the seed article's Calico IPIP cluster in network
//! namespaces, the bottom layer of the tooling. It knows nothing of tunl:
//! [`crate::testbed`] starts the daemons on it, and the end-to-end tests,
//! `tunl lab` and `tunl bench` use both.
//!
//! A [`Cluster`] is a set of **node** namespaces on one L2 underlay segment
//! (a veth pair for two nodes, otherwise a bridge in a separate "switch"
//! namespace), each owning a **block** (a /26) and some **pod** namespaces
//! wired the way Calico wires them:
//!
//! ```text
//!  tunl-<tag>-demo-hello-perf       tunl-<tag>-node2.perf            tunl-<tag>-node1.sit
//!  eth0 10.20.105.215/32  ───────  cali4bb1efe70a2                  eth0 172.16.35.4/16
//!  169.254.1.1 dev eth0            (ee:ee:ee:ee:ee:ee, proxy_arp)    │
//!  default via 169.254.1.1         eth0 172.16.36.5/16  ─────────────┘ (veth or bridge)
//! ```
//!
//! Between blocks the builder installs nothing ([`Overlay::None`], the caller
//! runs tunl daemons), plain routes over the underlay ([`Overlay::Direct`],
//! the limit of the machine) or kernel VXLAN the way Calico's VXLAN mode does
//! it ([`Overlay::Vxlan`], the kernel-tunnel reference).
//!
//! Every namespace is named `tunl-<tag>-<node or pod name>`, with a tag that
//! is unique per cluster unless the caller fixes one, so parallel tests never
//! collide. Dropping the [`Cluster`] (also while unwinding from a panic) kills
//! every process it spawned and deletes every namespace it created;
//! [`Cluster::keep`] disarms that and [`teardown`] undoes a kept cluster.
//!
//! The builder drives `ip` (iproute2) and `/proc/sys` as subprocesses; the
//! measurement helpers run `ping` and `iperf3`. It needs root (precisely
//! `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`).
//!
//! The parts, by job:
//!
//! - `spec`: what to build ([`ClusterSpec`], [`NodeSpec`], [`PodSpec`],
//!   [`Overlay`]), its validation and the plan of names it resolves to
//!   ([`Node`], [`Pod`]);
//! - `wiring`: creating the namespaces, the underlay (veth pair or bridge),
//!   the Calico-style pod veths, routes and sysctls;
//! - `vxlan`: the kernel VXLAN overlay of [`Overlay::Vxlan`];
//! - `processes`: spawning, adopting, signalling and ending the processes
//!   that run inside the namespaces, and the cleanup on drop and in
//!   [`teardown`];
//! - `measurement`: `ping` and `iperf3` between pods, and the parsers of
//!   their output.
//!
//! This file holds the [`Cluster`] itself: building it, looking up its
//! nodes, pods and namespaces, and running commands inside them.

mod measurement;
mod processes;
mod segments;
mod spec;
mod vxlan;
mod wiring;

use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::Ipv4Network;
use thiserror::Error;
use tracing::{debug, warn};

pub use measurement::{IperfResult, PingResult, UdpResult};
pub use processes::{ProcessOutput, tagged_namespaces, teardown};
pub use segments::{Host, ROUTER, arp_table_limit, router_address};
pub use spec::{
    ClusterSpec, HostSpec, IPIP_OVERHEAD, Node, NodeSpec, Overlay, Pod, PodSpec,
    UNDERLAY_PREFIX_LEN, veth_name,
};
pub use vxlan::{VXLAN_DEVICE, VXLAN_OVERHEAD, VXLAN_PORT, VXLAN_VNI};
pub use wiring::{CALI_MAC, POD_GATEWAY};

use spec::{node_plan, ns_name};
pub(crate) use wiring::check_privileges;

/// Counter that makes automatic tags unique within this process.
static NEXT_TAG: AtomicU32 = AtomicU32::new(0);

/// Errors of building, using or tearing down a [`Cluster`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The process lacks the privileges to create namespaces and links.
    #[error("needs root or CAP_NET_ADMIN (plus CAP_SYS_ADMIN for `ip netns add`): run with sudo")]
    NotPrivileged,
    /// The cluster spec is inconsistent.
    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),
    /// A namespace of the cluster already exists and `replace_existing` is off.
    #[error(
        "network namespace {0} already exists (left over from an earlier run?): \
         set replace_existing or run `tunl lab down`"
    )]
    NamespaceExists(String),
    /// A node, pod or namespace name that is not part of this cluster.
    #[error("no {kind} named {name:?} in this cluster")]
    NotFound {
        /// What was looked up ("node", "pod", "namespace", "process").
        kind: &'static str,
        /// The name that was not found.
        name: String,
    },
    /// A program could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        source: io::Error,
    },
    /// A command exited with a failure status.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (or its error report).
        stderr: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The output of a measurement tool could not be understood.
    #[error("could not parse {tool} output: {detail}")]
    Parse {
        /// The tool ("ping", "iperf3").
        tool: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Something did not happen within its bound.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// A built cluster of namespaces. Dropping it kills the processes it spawned
/// and deletes its namespaces, unless [`Cluster::keep`] disarmed that.
#[derive(Debug)]
pub struct Cluster {
    tag: String,
    overlay: Overlay,
    underlay_mtu: u16,
    pod_mtu: u16,
    nodes: Vec<Node>,
    hosts: Vec<Host>,
    subnets: Vec<Ipv4Network>,
    /// One switch namespace per underlay segment (none for a veth pair).
    switches: Vec<String>,
    router: Option<String>,
    /// Namespaces created so far, in creation order.
    namespaces: Vec<String>,
    /// Processes spawned and not yet reaped or taken.
    children: Mutex<Vec<Child>>,
    armed: bool,
}

impl Cluster {
    /// Builds the cluster. Checks privileges first; on any error, whatever
    /// was built so far is removed again.
    pub fn build(spec: ClusterSpec) -> Result<Cluster, TopologyError> {
        check_privileges()?;
        spec.validate()?;
        let fixed_tag = spec.tag.is_some();
        let tag = spec.tag.clone().unwrap_or_else(|| {
            let n = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
            format!("{}x{n}", std::process::id())
        });
        let nodes = node_plan(&spec, &tag);
        let hosts = segments::host_plan(&spec, &tag);
        let (switches, router) = segments::plan(&spec, &tag);

        // An automatic tag names only namespaces of a dead earlier process
        // with our pid: always safe to replace.
        let leftovers = tagged_namespaces(&tag)?;
        if let Some(first) = leftovers.first() {
            if fixed_tag && !spec.replace_existing {
                return Err(TopologyError::NamespaceExists(first.clone()));
            }
            warn!(
                tag,
                count = leftovers.len(),
                "replacing left-over namespaces"
            );
            teardown(&tag)?;
        }

        let mut cluster = Cluster {
            tag,
            overlay: spec.overlay,
            underlay_mtu: spec.underlay_mtu,
            pod_mtu: spec.pod_mtu(),
            nodes,
            hosts,
            subnets: spec.subnets.clone(),
            switches,
            router,
            namespaces: Vec::new(),
            children: Mutex::new(Vec::new()),
            armed: true,
        };
        cluster.wire()?;
        debug!(
            tag = cluster.tag,
            nodes = cluster.nodes.len(),
            "cluster built"
        );
        Ok(cluster)
    }

    /// The cluster's tag (the `<tag>` in `tunl-<tag>-...`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The overlay the builder installed.
    pub fn overlay(&self) -> Overlay {
        self.overlay
    }

    /// MTU of every node's `eth0`.
    pub fn underlay_mtu(&self) -> u16 {
        self.underlay_mtu
    }

    /// MTU of the pod veths (see [`ClusterSpec::pod_mtu`]).
    pub fn pod_mtu(&self) -> u16 {
        self.pod_mtu
    }

    /// The nodes, in spec order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods().find(|p| p.name == name)
    }

    /// All pods, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// Every namespace of the cluster (nodes, pods, hosts, the switches and
    /// the router, if any).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The switch namespace holding the (first) underlay bridge (clusters of
    /// other than two nodes, or with hosts or subnets).
    pub fn switch_netns(&self) -> Option<&str> {
        self.switches.first().map(String::as_str)
    }

    /// Routes a node needs toward the other nodes' blocks:
    /// `(block, next hop's underlay address)`, for tunl configs. Empty for an
    /// unknown node.
    pub fn remote_routes(&self, node: &str) -> Vec<(Ipv4Network, Ipv4Addr)> {
        if self.node(node).is_none() {
            return Vec::new();
        }
        self.nodes
            .iter()
            .filter(|n| n.name != node)
            .map(|n| (n.block, n.underlay))
            .collect()
    }

    /// The namespace for `name`: a namespace of this cluster, or the name of
    /// one of its nodes, pods or hosts, or `"switch"` (`"switch2"`, ...) or
    /// `"router"`.
    pub fn netns(&self, name: &str) -> Result<&str, TopologyError> {
        if let Some(ns) = self.namespaces.iter().find(|ns| *ns == name) {
            return Ok(ns);
        }
        if let Some(node) = self.node(name) {
            return Ok(&node.netns);
        }
        if let Some(pod) = self.pod(name) {
            return Ok(&pod.netns);
        }
        if let Some(host) = self.host(name) {
            return Ok(&host.netns);
        }
        let own = ns_name(&self.tag, name);
        if let Some(ns) = self
            .switches
            .iter()
            .chain(&self.router)
            .find(|ns| **ns == own)
        {
            return Ok(ns);
        }
        Err(TopologyError::NotFound {
            kind: "namespace",
            name: name.to_owned(),
        })
    }

    /// Runs `args` in a namespace of the cluster (by namespace, node or pod
    /// name; see [`Cluster::netns`]) and returns its output whatever its exit
    /// status.
    pub fn exec(&self, netns: &str, args: &[&str]) -> Result<Output, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        output_of(&mut cmd)
    }

    /// Like [`Cluster::exec`], but fails unless the command succeeds; returns
    /// its stdout.
    pub fn exec_ok(&self, netns: &str, args: &[&str]) -> Result<String, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        checked(&mut cmd)
    }

    /// A [`Command`] that runs `program` in a namespace of the cluster (by
    /// namespace, node or pod name), for callers that need environment
    /// variables or other settings; start it and hand the child to
    /// [`Cluster::adopt`] so the cluster ends it on drop.
    pub fn command(&self, netns: &str, program: &str) -> Result<Command, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        Ok(cmd)
    }

    fn pod_named(&self, name: &str) -> Result<&Pod, TopologyError> {
        self.pod(name).ok_or_else(|| TopologyError::NotFound {
            kind: "pod",
            name: name.to_owned(),
        })
    }
}

/// A summary for people: one line per node and per pod, with namespaces.
impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "cluster {} (overlay {}, underlay MTU {}, pod MTU {})",
            self.tag, self.overlay, self.underlay_mtu, self.pod_mtu
        )?;
        for node in &self.nodes {
            write!(
                f,
                "  node {} underlay {}/{} block {} netns {}",
                node.name,
                node.underlay,
                self.prefix_len(node.underlay),
                node.block,
                node.netns
            )?;
            if let Some(vtep) = node.vtep {
                write!(f, " vtep {vtep}")?;
            }
            writeln!(f)?;
            for pod in &node.pods {
                writeln!(
                    f,
                    "    pod {} {} via {} netns {}",
                    pod.name, pod.ip, pod.veth, pod.netns
                )?;
            }
        }
        for host in &self.hosts {
            writeln!(
                f,
                "  host {} underlay {}/{} netns {}",
                host.name,
                host.underlay,
                self.prefix_len(host.underlay),
                host.netns
            )?;
        }
        for switch in &self.switches {
            writeln!(f, "  switch netns {switch} (bridge br0)")?;
        }
        if let Some(router) = &self.router {
            let subnets: Vec<String> = self
                .subnets
                .iter()
                .map(|s| format!("{}/{}", router_address(*s), s.prefix()))
                .collect();
            writeln!(f, "  router netns {router} ({})", subnets.join(", "))?;
        }
        Ok(())
    }
}

/// Runs `ip ARGS`, failing unless it succeeds.
fn ip(args: &[&str]) -> Result<(), TopologyError> {
    checked(Command::new("ip").args(args)).map(drop)
}

/// Runs a command, failing unless it succeeds; returns its stdout.
fn checked(cmd: &mut Command) -> Result<String, TopologyError> {
    let out = output_of(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TopologyError::Command {
            command: command_line(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn output_of(cmd: &mut Command) -> Result<Output, TopologyError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| TopologyError::Spawn {
            command: command_line(cmd),
            source,
        })
}

fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}
