//! What to build: the cluster spec (nodes, blocks, pods, underlay MTU,
//! overlay), its validation, and the plan it resolves to (namespace names,
//! VTEP addresses) before anything is created.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::segments::is_reserved;
use super::{TopologyError, VXLAN_DEVICE, VXLAN_OVERHEAD};

/// Prefix length of every node's underlay address: all nodes are on-link.
pub const UNDERLAY_PREFIX_LEN: u8 = 16;

/// Bytes an IPIP outer header adds.
pub const IPIP_OVERHEAD: u16 = 20;

/// How blocks on different nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overlay {
    /// Nothing between blocks: the caller runs tunl daemons, which create the
    /// tunnel device and the block routes themselves.
    #[default]
    None,
    /// No tunnel: `BLOCK via NODE dev eth0` routes on every node (the limit of
    /// the machine).
    Direct,
    /// Kernel VXLAN as Calico's VXLAN mode sets it up (`vxlan.calico`, VNI
    /// 4096, port 4789, a VTEP address per node, static neigh and fdb
    /// entries): the kernel-tunnel reference for benchmarks.
    Vxlan,
}

impl std::fmt::Display for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overlay::None => "none",
            Overlay::Direct => "direct",
            Overlay::Vxlan => "vxlan",
        })
    }
}

impl std::str::FromStr for Overlay {
    type Err = TopologyError;

    /// Parses `none`, `direct` or `vxlan` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Overlay::None),
            "direct" => Ok(Overlay::Direct),
            "vxlan" => Ok(Overlay::Vxlan),
            _ => Err(TopologyError::InvalidSpec(format!(
                "unknown overlay {s:?}: expected none, direct or vxlan"
            ))),
        }
    }
}

/// What to build: nodes, their blocks and pods, the underlay and the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Namespace tag: `None` for a fresh unique one (pid + counter), or a
    /// fixed one such as `"lab"` (ASCII letters, digits and `_` only).
    pub tag: Option<String>,
    /// The nodes, in order.
    pub nodes: Vec<NodeSpec>,
    /// MTU of every node's `eth0`.
    pub underlay_mtu: u16,
    /// What the builder installs between blocks.
    pub overlay: Overlay,
    /// With a fixed tag: delete namespaces left over from an earlier run with
    /// that tag instead of failing with [`TopologyError::NamespaceExists`].
    pub replace_existing: bool,
    /// Namespaces on the underlay that are not nodes (no block, no pods),
    /// e.g. BGP route reflectors.
    pub hosts: Vec<HostSpec>,
    /// The underlay's subnets. Empty: one segment, every address on-link in
    /// the first node's /16 (the default). Otherwise every node and host
    /// sits on the bridge of the subnet holding its address, and with two or
    /// more subnets a router namespace joins them (see
    /// [`ClusterSpec::with_subnets`]).
    pub subnets: Vec<Ipv4Network>,
}

/// A namespace on the underlay that is not a node: only an `eth0` (e.g. a
/// BGP route reflector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Host name, e.g. `rr1` (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Underlay address.
    pub underlay: Ipv4Addr,
}

impl HostSpec {
    /// A host named `name` at `underlay`.
    pub fn new(name: impl Into<String>, underlay: Ipv4Addr) -> Self {
        Self {
            name: name.into(),
            underlay,
        }
    }
}

/// One node: a namespace with an underlay `eth0` and a block of pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name, e.g. `node1.sit` (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Underlay address, on-link (/16) with the other nodes'.
    pub underlay: Ipv4Addr,
    /// The node's block, e.g. `10.20.42.0/26`.
    pub block: Ipv4Network,
    /// The node's pods; their addresses lie inside `block`.
    pub pods: Vec<PodSpec>,
}

/// One pod: a namespace whose `eth0` is `ip/32`, wired to its node by a veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name, e.g. `demo-hello-sit` (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// Name of the node-side veth, e.g. `cali04736ec14ce` (at most 15 bytes).
    pub veth: String,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self::seed()
    }
}

impl ClusterSpec {
    /// The seed article's cluster: `node1.sit` (172.16.35.4, block
    /// 10.20.42.0/26, pod `demo-hello-sit` 10.20.42.31 via `cali04736ec14ce`)
    /// and `node2.perf` (172.16.36.5, block 10.20.105.192/26, pod
    /// `demo-hello-perf` 10.20.105.215 via `cali4bb1efe70a2`), underlay MTU
    /// 1500, [`Overlay::None`], a fresh tag.
    pub fn seed() -> Self {
        let node = |name: &str, underlay, block, pod: PodSpec| NodeSpec {
            name: name.to_owned(),
            underlay,
            block,
            pods: vec![pod],
        };
        let pod = |name: &str, ip, veth: &str| PodSpec {
            name: name.to_owned(),
            ip,
            veth: veth.to_owned(),
        };
        Self {
            tag: None,
            nodes: vec![
                node(
                    "node1.sit",
                    Ipv4Addr::new(172, 16, 35, 4),
                    net(Ipv4Addr::new(10, 20, 42, 0), 26),
                    pod(
                        "demo-hello-sit",
                        Ipv4Addr::new(10, 20, 42, 31),
                        "cali04736ec14ce",
                    ),
                ),
                node(
                    "node2.perf",
                    Ipv4Addr::new(172, 16, 36, 5),
                    net(Ipv4Addr::new(10, 20, 105, 192), 26),
                    pod(
                        "demo-hello-perf",
                        Ipv4Addr::new(10, 20, 105, 215),
                        "cali4bb1efe70a2",
                    ),
                ),
            ],
            underlay_mtu: 1500,
            overlay: Overlay::None,
            replace_existing: false,
            hosts: Vec::new(),
            subnets: Vec::new(),
        }
    }

    /// A generated cluster: nodes `node1`..`nodeN` at 172.16.(35+i).(4+i)
    /// (i from 0), owning consecutive /26 blocks from 10.20.0.0, each with
    /// pods `nodeK-pod1`.. at the block's addresses .2, .3, ... and veths
    /// named by [`veth_name`]. Underlay MTU 1500, [`Overlay::None`].
    ///
    /// # Panics
    /// If `nodes` is 0 or more than 200, or `pods_per_node` more than 60.
    pub fn generated(nodes: usize, pods_per_node: usize) -> Self {
        assert!(
            (1..=200).contains(&nodes),
            "generated clusters have 1 to 200 nodes"
        );
        assert!(
            pods_per_node <= 60,
            "generated clusters have at most 60 pods per node"
        );
        let nodes = (0..nodes)
            .map(|i| {
                let name = format!("node{}", i + 1);
                let base = u32::from(Ipv4Addr::new(10, 20, 0, 0)) + 64 * i as u32;
                let pods = (0..pods_per_node)
                    .map(|k| {
                        PodSpec::new(format!("{name}-pod{}", k + 1), (base + 2 + k as u32).into())
                    })
                    .collect();
                NodeSpec {
                    underlay: Ipv4Addr::new(172, 16, 35 + i as u8, 4 + i as u8),
                    block: net(base.into(), 26),
                    pods,
                    name,
                }
            })
            .collect();
        Self {
            tag: None,
            nodes,
            underlay_mtu: 1500,
            overlay: Overlay::None,
            replace_existing: false,
            hosts: Vec::new(),
            subnets: Vec::new(),
        }
    }

    /// Sets the overlay.
    pub fn with_overlay(mut self, overlay: Overlay) -> Self {
        self.overlay = overlay;
        self
    }

    /// Fixes the tag (e.g. `"lab"`); see [`ClusterSpec::tag`].
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Sets the underlay MTU.
    pub fn with_underlay_mtu(mut self, mtu: u16) -> Self {
        self.underlay_mtu = mtu;
        self
    }

    /// Adds a host (see [`ClusterSpec::hosts`]).
    pub fn with_host(mut self, host: HostSpec) -> Self {
        self.hosts.push(host);
        self
    }

    /// Puts the underlay into these subnets: each gets its own bridge, and
    /// with two or more a router namespace ([`ROUTER`]) holds the first
    /// address of each (e.g. 172.16.35.1) and forwards between them; every
    /// node and host then has its default route via its subnet's router
    /// address, as the seed article's nodes do (`0.0.0.0 172.16.36.1 eth0`).
    pub fn with_subnets(mut self, subnets: Vec<Ipv4Network>) -> Self {
        self.subnets = subnets;
        self
    }

    /// The underlay segment holding `addr`: the subnet of
    /// [`ClusterSpec::subnets`] that contains it, or the first node's /16
    /// when there are none.
    pub fn segment_of(&self, addr: Ipv4Addr) -> Option<Ipv4Network> {
        if self.subnets.is_empty() {
            let first = net(self.nodes.first()?.underlay, UNDERLAY_PREFIX_LEN);
            return first.contains(addr).then_some(first);
        }
        self.subnets.iter().copied().find(|s| s.contains(addr))
    }

    /// Sets [`ClusterSpec::replace_existing`].
    pub fn with_replace_existing(mut self, replace: bool) -> Self {
        self.replace_existing = replace;
        self
    }

    /// MTU of the pod veths: the underlay MTU minus the tunnel overhead
    /// (IPIP's 20 bytes, or VXLAN's 50 in [`Overlay::Vxlan`] mode, as Calico
    /// sets it).
    pub fn pod_mtu(&self) -> u16 {
        let overhead = match self.overlay {
            Overlay::Vxlan => VXLAN_OVERHEAD,
            _ => IPIP_OVERHEAD,
        };
        self.underlay_mtu.saturating_sub(overhead)
    }

    pub(super) fn validate(&self) -> Result<(), TopologyError> {
        let bad = |msg: String| Err(TopologyError::InvalidSpec(msg));
        if let Some(tag) = &self.tag
            && (tag.is_empty()
                || tag.len() > 32
                || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return bad(format!(
                "tag {tag:?} must be 1-32 ASCII letters, digits or '_'"
            ));
        }
        if self.nodes.is_empty() {
            return bad("a cluster needs at least one node".into());
        }
        if !(576..=9000).contains(&self.underlay_mtu) {
            return bad(format!(
                "underlay MTU {} is outside 576..=9000",
                self.underlay_mtu
            ));
        }
        let mut names = HashSet::new();
        let mut underlays = HashSet::new();
        let mut ips = HashSet::new();
        self.validate_segments()?;
        for (i, node) in self.nodes.iter().enumerate() {
            check_name("node", &node.name)?;
            if is_reserved(&node.name) || !names.insert(node.name.as_str()) {
                return bad(format!("node name {:?} is reserved or repeated", node.name));
            }
            if self.segment_of(node.underlay).is_none() || !underlays.insert(node.underlay) {
                return bad(format!(
                    "node {} underlay {} must be unique and inside the underlay's subnets",
                    node.name, node.underlay
                ));
            }
            for other in &self.nodes[..i] {
                if other.block.overlaps(node.block) {
                    return bad(format!(
                        "blocks {} ({}) and {} ({}) overlap",
                        other.block, other.name, node.block, node.name
                    ));
                }
            }
            let mut veths = HashSet::new();
            for pod in &node.pods {
                check_name("pod", &pod.name)?;
                if is_reserved(&pod.name) || !names.insert(pod.name.as_str()) {
                    return bad(format!("pod name {:?} is reserved or repeated", pod.name));
                }
                if !node.block.contains(pod.ip) || !ips.insert(pod.ip) {
                    return bad(format!(
                        "pod {} address {} must be unique and inside block {}",
                        pod.name, pod.ip, node.block
                    ));
                }
                if self.overlay == Overlay::Vxlan && pod.ip == node.block.network() {
                    return bad(format!(
                        "pod {} uses {}, the node's VTEP address in VXLAN mode",
                        pod.name, pod.ip
                    ));
                }
                let veth_ok = !pod.veth.is_empty()
                    && pod.veth.len() <= 15
                    && pod
                        .veth
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    && !["eth0", "lo", "all", "default", ".", "..", VXLAN_DEVICE]
                        .contains(&pod.veth.as_str());
                if !veth_ok || !veths.insert(pod.veth.as_str()) {
                    return bad(format!(
                        "veth name {:?} of pod {} is invalid or repeated",
                        pod.veth, pod.name
                    ));
                }
            }
        }
        for host in &self.hosts {
            check_name("host", &host.name)?;
            if is_reserved(&host.name) || !names.insert(host.name.as_str()) {
                return bad(format!("host name {:?} is reserved or repeated", host.name));
            }
            if self.segment_of(host.underlay).is_none() || !underlays.insert(host.underlay) {
                return bad(format!(
                    "host {} underlay {} must be unique and inside the underlay's subnets",
                    host.name, host.underlay
                ));
            }
        }
        Ok(())
    }
}

impl NodeSpec {
    /// A node without pods.
    pub fn new(name: impl Into<String>, underlay: Ipv4Addr, block: Ipv4Network) -> Self {
        Self {
            name: name.into(),
            underlay,
            block,
            pods: Vec::new(),
        }
    }

    /// Adds a pod.
    pub fn with_pod(mut self, pod: PodSpec) -> Self {
        self.pods.push(pod);
        self
    }
}

impl PodSpec {
    /// A pod whose veth is named by [`veth_name`].
    pub fn new(name: impl Into<String>, ip: Ipv4Addr) -> Self {
        let name = name.into();
        let veth = veth_name(&name);
        Self { name, ip, veth }
    }
}

/// The node-side veth name for a pod, the way Calico names them: `cali`
/// followed by 11 hex digits of a hash of the pod name (FNV-1a, stable across
/// runs and builds).
pub fn veth_name(pod: &str) -> String {
    let hash = pod.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("cali{:011x}", hash >> 20)
}

/// A node of a built cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name, e.g. `node1.sit`.
    pub name: String,
    /// Its namespace, e.g. `tunl-<tag>-node1.sit`.
    pub netns: String,
    /// Underlay address of its `eth0` (/16).
    pub underlay: Ipv4Addr,
    /// Its block.
    pub block: Ipv4Network,
    /// Its VTEP address on `vxlan.calico` (the block's first address) in
    /// [`Overlay::Vxlan`] mode.
    pub vtep: Option<Ipv4Addr>,
    /// Its pods.
    pub pods: Vec<Pod>,
}

/// A pod of a built cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Pod name, e.g. `demo-hello-sit`.
    pub name: String,
    /// Its namespace, e.g. `tunl-<tag>-demo-hello-sit`.
    pub netns: String,
    /// Its address (`eth0`, /32).
    pub ip: Ipv4Addr,
    /// Name of the node-side veth.
    pub veth: String,
    /// Name of its node.
    pub node: String,
}

fn check_name(kind: &str, name: &str) -> Result<(), TopologyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TopologyError::InvalidSpec(format!(
            "{kind} name {name:?} must be 1-64 ASCII letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The built nodes and pods (names resolved, nothing created yet).
pub(super) fn node_plan(spec: &ClusterSpec, tag: &str) -> Vec<Node> {
    spec.nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            netns: ns_name(tag, &n.name),
            underlay: n.underlay,
            block: n.block,
            vtep: (spec.overlay == Overlay::Vxlan).then(|| n.block.network()),
            pods: n
                .pods
                .iter()
                .map(|p| Pod {
                    name: p.name.clone(),
                    netns: ns_name(tag, &p.name),
                    ip: p.ip,
                    veth: p.veth.clone(),
                    node: n.name.clone(),
                })
                .collect(),
        })
        .collect()
}

pub(super) fn ns_name(tag: &str, name: &str) -> String {
    format!("tunl-{tag}-{name}")
}

fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Network {
    Ipv4Network::new(addr, prefix).expect("prefix length is at most 32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_spec_matches_the_article() {
        let spec = ClusterSpec::seed();
        spec.validate().unwrap();
        assert_eq!(spec.nodes[0].name, "node1.sit");
        assert_eq!(spec.nodes[1].pods[0].veth, "cali4bb1efe70a2");
        assert_eq!(spec.pod_mtu(), 1480);
        assert_eq!(spec.clone().with_overlay(Overlay::Vxlan).pod_mtu(), 1450);
    }

    #[test]
    fn generated_spec_is_valid_and_unique() {
        let spec = ClusterSpec::generated(5, 3).with_overlay(Overlay::Vxlan);
        spec.validate().unwrap();
        assert_eq!(spec.nodes[2].underlay, Ipv4Addr::new(172, 16, 37, 6));
        assert_eq!(spec.nodes[2].block.to_string(), "10.20.0.128/26");
        assert_eq!(spec.nodes[2].pods[0].ip, Ipv4Addr::new(10, 20, 0, 130));
        let veth = &spec.nodes[0].pods[0].veth;
        assert_eq!(veth.len(), 15);
        assert!(veth.starts_with("cali"));
        assert_eq!(veth_name("node1-pod1"), *veth);
        assert_ne!(veth_name("node1-pod1"), veth_name("node1-pod2"));
    }

    #[test]
    fn overlay_names_round_trip() {
        for o in [Overlay::None, Overlay::Direct, Overlay::Vxlan] {
            assert_eq!(o.to_string().parse::<Overlay>().unwrap(), o);
        }
        assert_eq!("VXLAN".parse::<Overlay>().unwrap(), Overlay::Vxlan);
        assert!("ipip".parse::<Overlay>().is_err());
    }

    #[test]
    fn rejects_bad_specs() {
        let mut spec = ClusterSpec::seed();
        spec.nodes[1].block = spec.nodes[0].block;
        assert!(matches!(
            spec.validate(),
            Err(TopologyError::InvalidSpec(_))
        ));

        let mut spec = ClusterSpec::seed();
        spec.nodes[0].pods[0].ip = Ipv4Addr::new(10, 20, 105, 1);
        assert!(spec.validate().is_err());

        let spec = ClusterSpec::seed().with_tag("a-b");
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::seed();
        spec.nodes[1].underlay = Ipv4Addr::new(192, 168, 0, 1);
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::seed();
        spec.nodes[0].pods[0].veth = "cali-name-too-long".into();
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::generated(3, 1);
        spec.nodes[0].pods[0].name = "switch".into();
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::seed();
        spec.nodes[1].pods[0].name = "node1.sit".into();
        assert!(spec.validate().is_err());
    }
}
