//! The seed's control plane, live: BIRD 2 on every node as a BGP client,
//! BIRD route reflectors at scale, and the routes BIRD installs on tunl's
//! device (`tunl lab --bgp`, the BGP end-to-end tests).
//!
//! A [`BgpCluster`] is a [`TunlCluster`] whose configs carry no routes
//! (tunl learns them from the kernel), plus a BIRD per node and per route
//! reflector:
//!
//! - every node runs `bird -f` in its namespace as a BGP client
//!   ([`config::node_config`]): it announces the node's block, installs it
//!   as a blackhole (as calico-node does) and installs the other nodes'
//!   blocks as `BLOCK via NODE dev tunl0 proto bird onlink`;
//! - by default the nodes peer with `K` route reflectors, BIRD instances in
//!   their own namespaces on the underlay (hosts `rr1`..`rrK` of the
//!   topology; [`config::reflector_config`]); with [`BgpSpec::mesh`] they
//!   peer node to node, N(N−1)/2 sessions against N·K;
//! - with two subnets (CrossSubnet) the nodes alternate between
//!   172.16.35.0/24 and 172.16.36.0/24, joined by the topology's router
//!   namespace; same-subnet blocks go via eth0, unencapsulated.
//!
//! One block, [`MOVED_BLOCK`], can move: node 1 announces it at start and
//! node 2 can take it over ([`BgpCluster::move_block`]); its address
//! [`MOVED_ADDRESS`] answers on both nodes (on `lo`), standing for a pod
//! that lives wherever the block is.
//!
//! Processes: each BIRD is a child of this process, spawned through the
//! [`Cluster`] (so its drop ends any that are left) with its own config,
//! control socket (`-s`), pid file (`-P`) and log in the testbed's folder.
//! [`BgpCluster`]'s drop stops the BIRDs first (SIGTERM, reaped), then the
//! tunl daemons and the namespaces go with the [`TunlCluster`].
//!
//! Start order matters (BIRD's export filter fails for good on a route it
//! exports while tunl0 is missing or down): the tunl daemons are up, with
//! their devices, before any BIRD starts; after a tunl restart,
//! [`BgpCluster::reload_kernel`] re-exports.

pub mod birdc;
pub mod config;
mod moving;
mod routes;
pub mod walk;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;

use crate::testbed::{DaemonOptions, TunlCluster};
use crate::topology::{
    Cluster, ClusterSpec, HostSpec, ProcessOutput, TopologyError, arp_table_limit,
};
pub use moving::{BlockMove, MoveOptions};
pub use routes::{KernelRoute, parse_routes};

/// The block that moves between nodes 1 and 2.
pub const MOVED_BLOCK: Ipv4Network = net(Ipv4Addr::new(10, 20, 255, 192), 26);

/// The address in [`MOVED_BLOCK`] that answers pings on whichever node owns
/// it (it is on `lo` of nodes 1 and 2).
pub const MOVED_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 20, 255, 193);

/// The two underlay subnets of CrossSubnet mode: the seed article's
/// (node1.sit 172.16.35.4 via 172.16.35.1, node2.perf 172.16.36.5 via
/// 172.16.36.1).
pub const SUBNETS: [Ipv4Network; 2] = [
    net(Ipv4Addr::new(172, 16, 35, 0), 24),
    net(Ipv4Addr::new(172, 16, 36, 0), 24),
];

/// The most nodes a BGP lab has.
pub const MAX_NODES: usize = 64;

/// The most route reflectors a BGP lab has.
pub const MAX_REFLECTORS: usize = 8;

/// How long BIRD may take to answer on its control socket.
const BIRD_START_TIMEOUT: Duration = Duration::from_secs(10);

const fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Network {
    match Ipv4Network::new_checked(addr, prefix) {
        Some(n) => n,
        None => panic!("prefix length is at most 32"),
    }
}

/// What to build: nodes, route reflectors (or a mesh), subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSpec {
    /// Number of nodes (2..=[`MAX_NODES`]).
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Route reflectors; 0 is the full node-to-node mesh.
    pub reflectors: usize,
    /// Underlay subnets: 1, or 2 for CrossSubnet.
    pub subnets: usize,
    /// Underlay MTU.
    pub underlay_mtu: u16,
    /// Namespace tag (see [`ClusterSpec::tag`]).
    pub tag: Option<String>,
    /// See [`ClusterSpec::replace_existing`].
    pub replace_existing: bool,
}

impl BgpSpec {
    /// `nodes` nodes with a pod each on one subnet, peering with one route
    /// reflector when there are more than two nodes, else in a mesh.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            pods_per_node: 1,
            reflectors: usize::from(nodes > 2),
            subnets: 1,
            underlay_mtu: 1500,
            tag: None,
            replace_existing: false,
        }
    }

    /// The full node-to-node mesh (no route reflectors).
    pub fn mesh(mut self) -> Self {
        self.reflectors = 0;
        self
    }

    /// `k` route reflectors (0: the mesh).
    pub fn with_reflectors(mut self, k: usize) -> Self {
        self.reflectors = k;
        self
    }

    /// 1 subnet, or 2 for CrossSubnet.
    pub fn with_subnets(mut self, subnets: usize) -> Self {
        self.subnets = subnets;
        self
    }

    /// Pods per node.
    pub fn with_pods_per_node(mut self, pods: usize) -> Self {
        self.pods_per_node = pods;
        self
    }

    /// Fixes the tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Whether the nodes peer in a full mesh.
    pub fn is_mesh(&self) -> bool {
        self.reflectors == 0
    }

    /// BGP sessions of a full mesh of these nodes: N(N−1)/2.
    pub fn mesh_sessions(&self) -> usize {
        self.nodes * self.nodes.saturating_sub(1) / 2
    }

    /// BGP sessions with the route reflectors: N·K.
    pub fn reflector_sessions(&self) -> usize {
        self.nodes * self.reflectors
    }

    /// The sessions this spec should bring up.
    pub fn expected_sessions(&self) -> usize {
        if self.is_mesh() {
            self.mesh_sessions()
        } else {
            self.reflector_sessions()
        }
    }

    /// Route reflector `k`'s (from 1) name and address: `rrK` at
    /// 172.16.35.(200+K), in the first subnet.
    pub fn reflector(k: usize) -> (String, Ipv4Addr) {
        (format!("rr{k}"), Ipv4Addr::new(172, 16, 35, 200 + k as u8))
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let bad = |m: String| Err(TopologyError::InvalidSpec(m));
        if !(2..=MAX_NODES).contains(&self.nodes) {
            return bad(format!("a BGP lab has 2 to {MAX_NODES} nodes"));
        }
        if self.reflectors > MAX_REFLECTORS {
            return bad(format!("at most {MAX_REFLECTORS} route reflectors"));
        }
        if !(1..=2).contains(&self.subnets) {
            return bad("--subnets is 1 or 2".to_owned());
        }
        if !(1..=60).contains(&self.pods_per_node) {
            return bad("1 to 60 pods per node".to_owned());
        }
        Ok(())
    }

    /// The topology: [`ClusterSpec::generated`] nodes (blocks from
    /// 10.20.0.0, one /26 each), moved into the CrossSubnet subnets when
    /// there are two (node i at 172.16.(35 + i mod 2).(4 + i)), and the
    /// route reflectors as hosts.
    pub fn cluster_spec(&self) -> Result<ClusterSpec, TopologyError> {
        self.validate()?;
        let mut spec = ClusterSpec::generated(self.nodes, self.pods_per_node)
            .with_underlay_mtu(self.underlay_mtu)
            .with_replace_existing(self.replace_existing);
        if let Some(tag) = &self.tag {
            spec = spec.with_tag(tag.clone());
        }
        if self.subnets == 2 {
            for (i, node) in spec.nodes.iter_mut().enumerate() {
                node.underlay = Ipv4Addr::new(172, 16, 35 + (i % 2) as u8, 4 + i as u8);
            }
            spec = spec.with_subnets(SUBNETS.to_vec());
        }
        for k in 1..=self.reflectors {
            let (name, addr) = Self::reflector(k);
            spec = spec.with_host(HostSpec::new(name, addr));
        }
        Ok(spec)
    }
}

/// Why a BGP cluster step failed.
pub type BgpError = TopologyError;

/// One BIRD instance of the cluster.
#[derive(Debug, Clone)]
pub struct Bird {
    /// The node or route reflector it runs on.
    pub name: String,
    /// Whether it is a route reflector.
    pub reflector: bool,
    /// Its config file.
    pub config: PathBuf,
    /// Its control socket (`birdc -s`).
    pub socket: PathBuf,
    /// Its pid file.
    pub pid_file: PathBuf,
    /// Its log (BIRD's `log` file; stdout and stderr go to `<name>.out`).
    pub log: PathBuf,
    /// Its pid while it runs.
    pub pid: Option<u32>,
}

/// The sessions BIRD reports, over every BIRD of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Established BGP sessions by BIRD instance, as `show protocols` lists
    /// them.
    pub by_bird: Vec<(String, usize)>,
}

impl Sessions {
    /// Sessions: every session has two ends, each listed by its BIRD.
    pub fn established(&self) -> usize {
        self.by_bird.iter().map(|(_, n)| n).sum::<usize>() / 2
    }

    /// Session ends listed by the route reflectors (`rr*`).
    pub fn at_reflectors(&self) -> usize {
        self.by_bird
            .iter()
            .filter(|(name, _)| name.starts_with("rr"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A cluster of tunl nodes whose routes come from BIRD.
pub struct BgpCluster {
    spec: BgpSpec,
    birds: Vec<Bird>,
    moved_owner: String,
    birds_started: Instant,
    pinned_neighbours: Option<usize>,
    /// Always `Some` until [`BgpCluster::keep`].
    tc: Option<TunlCluster>,
}

impl std::fmt::Debug for BgpCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BgpCluster")
            .field("spec", &self.spec)
            .field("birds", &self.birds)
            .finish()
    }
}

impl BgpCluster {
    /// Builds the cluster, starts tunl on every node (its config without
    /// routes, the moved block among node 1's and node 2's blocks) and then BIRD on every
    /// route reflector and node. Returns once every BIRD answers on its
    /// control socket; see [`BgpCluster::wait_converged`].
    pub fn start(
        spec: BgpSpec,
        tunl: &Path,
        mut options: DaemonOptions,
    ) -> Result<BgpCluster, BgpError> {
        let cluster_spec = spec.cluster_spec()?;
        check_bird()?;
        options.routes = false;
        // The moved block's two owners, node 1 and node 2, hold it among
        // their blocks (decap delivers into it); no other node does, as
        // their tunl refuses packets from the block sent by another node
        // when it is one of theirs.
        for node in cluster_spec.nodes.iter().take(2) {
            let owner = (node.name.clone(), MOVED_BLOCK);
            if !options.extra_blocks.contains(&owner) {
                options.extra_blocks.push(owner);
            }
        }
        let tc = TunlCluster::start(cluster_spec, tunl, options)?;
        let nodes = tc.cluster().nodes().to_vec();
        let moved_owner = nodes[0].name.clone();
        // The kernel's ARP table is shared by every namespace: past half of
        // it, pin the underlay's entries (permanent ones do not count).
        let c = tc.cluster();
        let needed = c.underlay_arp_entries() + 2 * c.pods().count();
        let pinned_neighbours = match arp_table_limit() {
            Some(limit) if needed > limit / 2 => Some(c.pin_underlay_neighbours()?),
            _ => None,
        };
        let mut bgp = BgpCluster {
            birds: Vec::new(),
            moved_owner,
            birds_started: Instant::now(),
            pinned_neighbours,
            tc: Some(tc),
            spec,
        };
        let addr = format!("{MOVED_ADDRESS}/32");
        for node in &nodes[..2] {
            bgp.cluster()
                .exec_ok(&node.name, &["ip", "addr", "add", &addr, "dev", "lo"])?;
        }
        bgp.write_configs()?;
        bgp.birds_started = Instant::now();
        // Reflectors first, so the nodes' first connection finds them.
        let names: Vec<String> = bgp.birds.iter().map(|b| b.name.clone()).collect();
        for name in &names {
            bgp.spawn_bird(name)?;
        }
        for name in &names {
            bgp.wait_bird(name)?;
        }
        Ok(bgp)
    }

    fn write_configs(&mut self) -> Result<(), BgpError> {
        let c = self.cluster();
        let dir = self.tunl().dir().to_owned();
        let multihop = c.subnets().len() > 1;
        let reflectors: Vec<config::Peer> = c
            .hosts()
            .iter()
            .map(|h| config::Peer {
                name: h.name.clone(),
                addr: h.underlay,
            })
            .collect();
        let node_peers: Vec<config::Peer> = c
            .nodes()
            .iter()
            .map(|n| config::Peer {
                name: n.name.clone(),
                addr: n.underlay,
            })
            .collect();
        let mut birds = Vec::new();
        let mut texts = Vec::new();
        for host in c.hosts() {
            let bird = Bird::new(&dir, &host.name, true);
            texts.push(config::reflector_config(&config::ReflectorBird {
                name: &host.name,
                addr: host.underlay,
                clients: node_peers.clone(),
                multihop,
                log: &bird.log,
            }));
            birds.push(bird);
        }
        for (i, node) in c.nodes().iter().enumerate() {
            let bird = Bird::new(&dir, &node.name, false);
            let peers = if reflectors.is_empty() {
                node_peers
                    .iter()
                    .filter(|p| p.name != node.name)
                    .cloned()
                    .collect()
            } else {
                reflectors.clone()
            };
            texts.push(config::node_config(&config::NodeBird {
                name: &node.name,
                addr: node.underlay,
                blocks: vec![node.block],
                moved: (i < 2).then_some((MOVED_BLOCK, i == 0)),
                peers,
                subnet: multihop.then(|| c.segment_of(node.underlay)).flatten(),
                log: &bird.log,
            }));
            birds.push(bird);
        }
        for (bird, text) in birds.iter().zip(&texts) {
            std::fs::write(&bird.config, text).map_err(|source| TopologyError::Io {
                context: format!("writing {}", bird.config.display()),
                source,
            })?;
        }
        self.birds = birds;
        Ok(())
    }

    fn bird_index(&self, name: &str) -> Result<usize, BgpError> {
        self.birds
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| TopologyError::NotFound {
                kind: "BIRD on",
                name: name.to_owned(),
            })
    }

    /// The BIRD running on node or reflector `name`.
    pub fn bird(&self, name: &str) -> Result<&Bird, BgpError> {
        Ok(&self.birds[self.bird_index(name)?])
    }

    /// Every BIRD: the reflectors, then the nodes.
    pub fn birds(&self) -> &[Bird] {
        &self.birds
    }

    fn spawn_bird(&mut self, name: &str) -> Result<u32, BgpError> {
        let i = self.bird_index(name)?;
        let b = &self.birds[i];
        let out = b.log.with_extension("out");
        let (config, socket, pid_file) = (
            b.config.to_string_lossy().into_owned(),
            b.socket.to_string_lossy().into_owned(),
            b.pid_file.to_string_lossy().into_owned(),
        );
        let pid = self.cluster().spawn(
            name,
            &["bird", "-f", "-c", &config, "-s", &socket, "-P", &pid_file],
            ProcessOutput::File(out),
        )?;
        self.birds[i].pid = Some(pid);
        Ok(pid)
    }

    /// Waits until BIRD on `name` answers on its control socket; fails with
    /// its log if it exits first.
    fn wait_bird(&self, name: &str) -> Result<(), BgpError> {
        let b = self.bird(name)?;
        let pid = b.pid.ok_or_else(|| TopologyError::NotFound {
            kind: "running BIRD on",
            name: name.to_owned(),
        })?;
        let deadline = Instant::now() + BIRD_START_TIMEOUT;
        loop {
            if let Some(status) = self.cluster().try_wait(pid)? {
                return Err(TopologyError::Command {
                    command: format!("bird on {name}"),
                    status,
                    stderr: self.bird_log(name),
                });
            }
            if b.socket.exists() && birdc::birdc(&b.socket, &["show", "status"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TopologyError::Timeout(format!(
                    "BIRD on {name} to answer on {}: {}",
                    b.socket.display(),
                    self.bird_log(name)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// BIRD's log and output on `name` so far.
    pub fn bird_log(&self, name: &str) -> String {
        let Ok(b) = self.bird(name) else {
            return String::new();
        };
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&b.log), read(&b.log.with_extension("out")))
    }

    /// Runs `birdc CMD...` against the BIRD on `name`.
    pub fn birdc(&self, name: &str, args: &[&str]) -> Result<String, BgpError> {
        birdc::birdc(&self.bird(name)?.socket, args)
    }

    /// Stops the BIRD on `name` (SIGTERM: it withdraws its routes from its
    /// peers and removes its own from the kernel) and reaps it.
    pub fn stop_bird(&mut self, name: &str) -> Result<std::process::ExitStatus, BgpError> {
        let i = self.bird_index(name)?;
        let pid = self.birds[i]
            .pid
            .take()
            .ok_or_else(|| TopologyError::NotFound {
                kind: "running BIRD on",
                name: name.to_owned(),
            })?;
        self.cluster().terminate(pid)
    }

    /// Starts the BIRD on `name` again (after [`BgpCluster::stop_bird`]),
    /// with the config it had at start, and waits until it answers.
    pub fn start_bird(&mut self, name: &str) -> Result<(), BgpError> {
        self.spawn_bird(name)?;
        self.wait_bird(name)
    }

    /// `birdc reload out kernel1` on node `name`: BIRD exports its routes to
    /// the kernel again (after tunl0 came back; a route whose export failed
    /// while the device was missing is never retried otherwise).
    pub fn reload_kernel(&self, name: &str) -> Result<(), BgpError> {
        self.birdc(name, &["reload", "out", config::KERNEL_PROTOCOL])
            .map(drop)
    }

    /// Established sessions as every BIRD's `show protocols` lists them.
    pub fn sessions(&self) -> Result<Sessions, BgpError> {
        let mut by_bird = Vec::new();
        for b in &self.birds {
            let n = if b.pid.is_some() {
                let text = birdc::birdc(&b.socket, &["show", "protocols"])?;
                birdc::parse_protocols(&text)
                    .iter()
                    .filter(|p| p.is_established_bgp())
                    .count()
            } else {
                0
            };
            by_bird.push((b.name.clone(), n));
        }
        Ok(Sessions { by_bird })
    }

    /// The `proto bird` routes in node `name`'s kernel.
    pub fn bird_routes(&self, name: &str) -> Result<Vec<KernelRoute>, BgpError> {
        let text = self
            .cluster()
            .exec_ok(name, &["ip", "-j", "route", "show", "proto", "bird"])?;
        parse_routes(&text)
    }

    /// What node `name`'s kernel should have from BIRD that it lacks: every
    /// other node's block via that node, and the moved block via its owner.
    /// Empty when the node has converged.
    pub fn missing_routes(&self, name: &str) -> Result<Vec<String>, BgpError> {
        let routes = self.bird_routes(name)?;
        let c = self.cluster();
        let owner = c
            .node(&self.moved_owner)
            .map(|n| n.underlay)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let wanted = c
            .nodes()
            .iter()
            .filter(|n| n.name != name)
            .map(|n| (n.block, n.underlay))
            .chain((self.moved_owner != name).then_some((MOVED_BLOCK, owner)));
        Ok(wanted
            .filter(|(block, via)| {
                !routes
                    .iter()
                    .any(|r| r.dst == *block && r.gateway == Some(*via))
            })
            .map(|(block, via)| format!("{block} via {via}"))
            .collect())
    }

    /// Waits until every session is Established and every node's kernel has
    /// every route it should ([`BgpCluster::missing_routes`]); returns how
    /// long after the BIRDs started that was (as far as this polling sees).
    pub fn wait_converged(&self, timeout: Duration) -> Result<Duration, BgpError> {
        let deadline = Instant::now() + timeout;
        let names: Vec<String> = self
            .cluster()
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        loop {
            let sessions = self.sessions()?.established();
            let mut missing = Vec::new();
            if sessions == self.expected_sessions() {
                for name in &names {
                    for m in self.missing_routes(name)? {
                        missing.push(format!("{name}: {m}"));
                    }
                }
                if missing.is_empty() {
                    return Ok(self.birds_started.elapsed());
                }
            }
            if Instant::now() > deadline {
                return Err(TopologyError::Timeout(format!(
                    "BGP to converge: {sessions} of {} sessions Established, missing routes: {}",
                    self.expected_sessions(),
                    missing.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sessions expected with the BIRDs that run (all at start).
    fn expected_sessions(&self) -> usize {
        let running = |name: &str| self.bird(name).is_ok_and(|b| b.pid.is_some());
        let nodes: Vec<&str> = self
            .cluster()
            .nodes()
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| running(n))
            .collect();
        let reflectors = self
            .cluster()
            .hosts()
            .iter()
            .filter(|h| running(&h.name))
            .count();
        if self.spec.is_mesh() {
            nodes.len() * nodes.len().saturating_sub(1) / 2
        } else {
            nodes.len() * reflectors
        }
    }

    /// How many permanent ARP entries the underlay got at start, if the
    /// cluster was too large for the kernel's shared ARP table (see
    /// [`Cluster::pin_underlay_neighbours`]).
    pub fn pinned_neighbours(&self) -> Option<usize> {
        self.pinned_neighbours
    }

    /// The node that announces [`MOVED_BLOCK`] now.
    pub fn moved_owner(&self) -> &str {
        &self.moved_owner
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &BgpSpec {
        &self.spec
    }

    /// The tunl testbed underneath.
    pub fn tunl(&self) -> &TunlCluster {
        self.tc
            .as_ref()
            .expect("the testbed is only taken by keep(), which consumes self")
    }

    /// The tunl testbed underneath, mutably (to restart a daemon).
    pub fn tunl_mut(&mut self) -> &mut TunlCluster {
        self.tc
            .as_mut()
            .expect("the testbed is only taken by keep(), which consumes self")
    }

    /// The namespaces underneath.
    pub fn cluster(&self) -> &Cluster {
        self.tunl().cluster()
    }

    /// Leaves everything running (BIRDs included) and returns the testbed
    /// (whose [`TunlCluster::keep`] then disarms the cleanup).
    pub fn keep(mut self) -> TunlCluster {
        self.birds.clear();
        self.tc
            .take()
            .expect("the testbed is only taken by keep(), which consumes self")
    }
}

/// Checks that BIRD 2 is installed: the configs use BIRD 2 syntax, and
/// the export filter that installs `via NODE dev tunl0 onlink` was verified
/// with 2.0.12.
fn check_bird() -> Result<(), BgpError> {
    let command = "bird --version".to_owned();
    let out = std::process::Command::new("bird")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| TopologyError::Spawn {
            command: format!("{command} (install Debian's bird2: scripts/setup.sh)"),
            source,
        })?;
    // BIRD prints its version on stderr.
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if text.contains("BIRD version 2.") {
        Ok(())
    } else {
        Err(TopologyError::Command {
            command,
            status: out.status,
            stderr: format!(
                "the BGP lab needs BIRD 2 (Debian's bird2), found: {}",
                text.trim()
            ),
        })
    }
}

impl Bird {
    fn new(dir: &Path, name: &str, reflector: bool) -> Self {
        let file = |ext: &str| dir.join(format!("bird-{name}.{ext}"));
        Bird {
            name: name.to_owned(),
            reflector,
            config: file("conf"),
            socket: file("ctl"),
            pid_file: file("pid"),
            log: file("log"),
            pid: None,
        }
    }
}

impl Drop for BgpCluster {
    fn drop(&mut self) {
        let Some(tc) = &self.tc else {
            return; // kept
        };
        for b in &mut self.birds {
            if let Some(pid) = b.pid.take() {
                let _ = tc.cluster().terminate(pid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_mesh_against_reflectors() {
        let spec = BgpSpec::new(16).with_reflectors(2);
        assert_eq!(spec.mesh_sessions(), 120);
        assert_eq!(spec.reflector_sessions(), 32);
        assert_eq!(spec.expected_sessions(), 32);
        assert_eq!(spec.clone().mesh().expected_sessions(), 120);
        assert_eq!(BgpSpec::new(2).reflectors, 0, "two nodes: a mesh");
        assert_eq!(BgpSpec::new(3).reflectors, 1);
    }

    #[test]
    fn counts_sessions_from_both_ends() {
        let s = Sessions {
            by_bird: vec![
                ("rr1".into(), 3),
                ("node1".into(), 1),
                ("node2".into(), 1),
                ("node3".into(), 1),
            ],
        };
        assert_eq!(s.established(), 3);
        assert_eq!(s.at_reflectors(), 3);
    }

    #[test]
    fn cross_subnet_spec_alternates_nodes_and_puts_reflectors_in_the_first() {
        let spec = BgpSpec::new(4).with_subnets(2).cluster_spec().unwrap();
        let addrs: Vec<String> = spec.nodes.iter().map(|n| n.underlay.to_string()).collect();
        assert_eq!(
            addrs,
            ["172.16.35.4", "172.16.36.5", "172.16.35.6", "172.16.36.7"]
        );
        assert_eq!(spec.hosts.len(), 1);
        assert_eq!(spec.hosts[0].underlay, Ipv4Addr::new(172, 16, 35, 201));
        assert_eq!(spec.subnets, SUBNETS.to_vec());
        assert!(!MOVED_BLOCK.overlaps(spec.nodes[3].block));
        assert!(MOVED_BLOCK.contains(MOVED_ADDRESS));
        assert!(config::POOL.contains(MOVED_ADDRESS));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(BgpSpec::new(1).cluster_spec().is_err());
        assert!(BgpSpec::new(MAX_NODES + 1).cluster_spec().is_err());
        assert!(BgpSpec::new(4).with_subnets(3).cluster_spec().is_err());
        assert!(BgpSpec::new(4).with_reflectors(9).cluster_spec().is_err());
        assert!(
            BgpSpec::new(MAX_NODES)
                .with_subnets(2)
                .with_reflectors(MAX_REFLECTORS)
                .cluster_spec()
                .is_ok()
        );
    }
}
