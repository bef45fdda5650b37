//! The underlay beyond one segment: hosts that are not nodes (e.g. BGP
//! route reflectors) and subnets joined by a router namespace, for
//! Calico's `ipipMode: CrossSubnet`.
//!
//! With [`ClusterSpec::subnets`] empty the underlay is one on-link /16, as
//! it always was: a veth pair for two nodes and no hosts, otherwise one
//! bridge in the `switch` namespace. With subnets, each has its own bridge
//! (`switch` for the first, `switch2`, ... for the others), and with two or
//! more the `router` namespace holds the first address of every subnet on
//! `eth0`, `eth1`, ... and forwards between them; every node and host gets
//! `default via` its subnet's router address.
//!
//! ```text
//!   node1 172.16.35.4 ─┐                        ┌─ node2 172.16.36.5
//!   node3 172.16.35.6 ─┤ switch (br0)  router   ├─ node4 172.16.36.7
//!   rr1 172.16.35.201 ─┘──── eth0 172.16.35.1   │  switch2 (br0)
//!                             eth1 172.16.36.1 ─┘
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnetwork::Ipv4Network;

use super::wiring::write_sysctls;
use super::{Cluster, ClusterSpec, Overlay, TopologyError, checked, ip, ns_name};

/// Name of the router namespace that joins the subnets (`tunl-<tag>-router`).
pub const ROUTER: &str = "router";

/// A host of a built cluster: a namespace on the underlay that is not a
/// node (see [`super::HostSpec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host name, e.g. `rr1`.
    pub name: String,
    /// Its namespace, e.g. `tunl-<tag>-rr1`.
    pub netns: String,
    /// Underlay address of its `eth0`.
    pub underlay: Ipv4Addr,
}

/// Names the builder uses for its own namespaces: `switch`, `switch2`, ...
/// and `router`.
pub(super) fn is_reserved(name: &str) -> bool {
    name == ROUTER
        || name
            .strip_prefix("switch")
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
}

/// The router's address on `subnet`: its first host address.
pub fn router_address(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// Name of the switch namespace of segment `i` (from 0).
fn switch_name(i: usize) -> String {
    if i == 0 {
        "switch".to_owned()
    } else {
        format!("switch{}", i + 1)
    }
}

impl ClusterSpec {
    /// Checks the subnets and the hosts' and nodes' places in them (names
    /// and uniqueness are checked with the nodes').
    pub(super) fn validate_segments(&self) -> Result<(), TopologyError> {
        let bad = |msg: String| Err(TopologyError::InvalidSpec(msg));
        for (i, s) in self.subnets.iter().enumerate() {
            if !(8..=30).contains(&s.prefix()) || s.network() != s.ip() {
                return bad(format!(
                    "underlay subnet {s} must be a network address with a prefix of 8 to 30"
                ));
            }
            if let Some(o) = self.subnets[..i].iter().find(|o| o.overlaps(*s)) {
                return bad(format!("underlay subnets {o} and {s} overlap"));
            }
        }
        if self.subnets.len() > 1 && self.overlay != Overlay::None {
            return bad(format!(
                "overlay {} needs one underlay segment (it routes on-link)",
                self.overlay
            ));
        }
        let addrs = self
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.underlay))
            .chain(self.hosts.iter().map(|h| (h.name.as_str(), h.underlay)));
        for (name, addr) in addrs {
            let Some(segment) = self.segment_of(addr) else {
                continue; // reported with the name by the caller
            };
            let routed = self.subnets.len() > 1 && addr == router_address(segment);
            if addr == segment.network() || addr == segment.broadcast() || routed {
                return bad(format!(
                    "{name}: {addr} is the network, broadcast or router address of {segment}"
                ));
            }
        }
        Ok(())
    }
}

/// The switch and router namespaces a spec needs: one switch per segment
/// when a bridge is needed, and the router with two or more subnets.
pub(super) fn plan(spec: &ClusterSpec, tag: &str) -> (Vec<String>, Option<String>) {
    let segments = spec.subnets.len().max(1);
    let members = spec.nodes.len() + spec.hosts.len();
    let bridged = segments > 1 || members != 2 || !spec.hosts.is_empty();
    let switches = if bridged {
        (0..segments)
            .map(|i| ns_name(tag, &switch_name(i)))
            .collect()
    } else {
        Vec::new()
    };
    let router = (segments > 1).then(|| ns_name(tag, ROUTER));
    (switches, router)
}

/// The built hosts.
pub(super) fn host_plan(spec: &ClusterSpec, tag: &str) -> Vec<Host> {
    spec.hosts
        .iter()
        .map(|h| Host {
            name: h.name.clone(),
            netns: ns_name(tag, &h.name),
            underlay: h.underlay,
        })
        .collect()
}

impl Cluster {
    /// The hosts (namespaces on the underlay that are not nodes).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The underlay's subnets as the spec gave them (empty: one on-link /16).
    pub fn subnets(&self) -> &[Ipv4Network] {
        &self.subnets
    }

    /// The underlay segment holding `addr` (see [`ClusterSpec::segment_of`]).
    pub fn segment_of(&self, addr: Ipv4Addr) -> Option<Ipv4Network> {
        if self.subnets.is_empty() {
            let first =
                Ipv4Network::new(self.nodes.first()?.underlay, super::UNDERLAY_PREFIX_LEN).ok()?;
            return first.contains(addr).then_some(first);
        }
        self.subnets.iter().copied().find(|s| s.contains(addr))
    }

    /// The router namespace joining the subnets, with two or more.
    pub fn router_netns(&self) -> Option<&str> {
        self.router.as_deref()
    }

    /// The switch namespaces, one per segment (none for a two-node veth
    /// pair).
    pub fn switch_namespaces(&self) -> &[String] {
        &self.switches
    }

    /// The prefix length of `addr`'s segment (the /16 by default).
    pub(super) fn prefix_len(&self, addr: Ipv4Addr) -> u8 {
        self.segment_of(addr)
            .map_or(super::UNDERLAY_PREFIX_LEN, |s| s.prefix())
    }

    /// The default gateway of `addr`: its subnet's router address, when a
    /// router joins the subnets.
    pub(super) fn gateway_of(&self, addr: Ipv4Addr) -> Option<Ipv4Addr> {
        self.router.as_ref()?;
        self.segment_of(addr).map(router_address)
    }

    /// The switch namespace of `addr`'s segment.
    fn switch_of(&self, addr: Ipv4Addr) -> Result<String, TopologyError> {
        let i = if self.subnets.is_empty() {
            0
        } else {
            self.subnets
                .iter()
                .position(|s| s.contains(addr))
                .ok_or_else(|| TopologyError::InvalidSpec(format!("{addr} is in no subnet")))?
        };
        self.switches
            .get(i)
            .cloned()
            .ok_or_else(|| TopologyError::InvalidSpec("no switch for the segment".into()))
    }

    /// Creates the switch namespaces (a bridge each), plugs every node's and
    /// host's `eth0` into its segment's bridge, and wires the router.
    pub(super) fn wire_switches(&mut self) -> Result<(), TopologyError> {
        let mtu = self.underlay_mtu.to_string();
        let no_v6 = [
            ("ipv6/conf/all/disable_ipv6", "1"),
            ("ipv6/conf/default/disable_ipv6", "1"),
        ];
        for switch in self.switches.clone() {
            self.add_netns(&switch)?;
            write_sysctls(&switch, &no_v6)?;
            ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        }
        let members: Vec<(String, String, Ipv4Addr)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("n{}", i + 1), n.netns.clone(), n.underlay))
            .chain(
                self.hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (format!("h{}", i + 1), h.netns.clone(), h.underlay)),
            )
            .collect();
        for (port, netns, addr) in &members {
            let switch = self.switch_of(*addr)?;
            veth_into_bridge(&switch, port, netns, "eth0", &mtu)?;
        }
        if let Some(router) = self.router.clone() {
            self.add_netns(&router)?;
            write_sysctls(
                &router,
                &[
                    ("ipv4/ip_forward", "1"),
                    ("ipv4/conf/all/rp_filter", "0"),
                    ("ipv4/conf/default/rp_filter", "0"),
                    no_v6[0],
                    no_v6[1],
                ],
            )?;
            ip(&["-n", &router, "link", "set", "lo", "up"])?;
            for (i, subnet) in self.subnets.clone().into_iter().enumerate() {
                let dev = format!("eth{i}");
                let switch = self.switches[i].clone();
                veth_into_bridge(&switch, "rt", &router, &dev, &mtu)?;
                let addr = format!("{}/{}", router_address(subnet), subnet.prefix());
                ip(&["-n", &router, "addr", "add", &addr, "dev", &dev])?;
                ip(&["-n", &router, "link", "set", &dev, "up"])?;
            }
        }
        Ok(())
    }

    /// Creates the hosts' namespaces (before the underlay is wired).
    pub(super) fn add_hosts(&mut self) -> Result<(), TopologyError> {
        for host in self.hosts.clone() {
            self.add_netns(&host.netns)?;
            write_sysctls(
                &host.netns,
                &[
                    ("ipv6/conf/all/disable_ipv6", "1"),
                    ("ipv6/conf/default/disable_ipv6", "1"),
                ],
            )?;
        }
        Ok(())
    }

    /// Addresses and routes of the hosts' `eth0` (after the underlay is
    /// wired).
    pub(super) fn address_hosts(&self) -> Result<(), TopologyError> {
        for host in &self.hosts {
            let addr = format!("{}/{}", host.underlay, self.prefix_len(host.underlay));
            ip(&["-n", &host.netns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
            self.add_default_route(&host.netns, host.underlay)?;
        }
        Ok(())
    }

    /// `default via ROUTER` in `netns`, when a router joins the subnets.
    pub(super) fn add_default_route(
        &self,
        netns: &str,
        addr: Ipv4Addr,
    ) -> Result<(), TopologyError> {
        if let Some(gw) = self.gateway_of(addr) {
            let gw = gw.to_string();
            ip(&[
                "-n", netns, "route", "add", "default", "via", &gw, "dev", "eth0",
            ])?;
        }
        Ok(())
    }
}

/// The kernel's limit on ARP entries that are not permanent, over every
/// network namespace of the host (`net.ipv4.neigh.default.gc_thresh3`,
/// read in this process's namespace, where it is global).
pub fn arp_table_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Cluster {
    /// Every underlay interface, by segment: `(netns, device, address)` of
    /// the nodes', hosts' and router's interfaces on it.
    fn segment_members(&self) -> Vec<Vec<(String, String, Ipv4Addr)>> {
        let segments = self.subnets.len().max(1);
        let mut members = vec![Vec::new(); segments];
        let index = |addr: Ipv4Addr| {
            self.subnets
                .iter()
                .position(|s| s.contains(addr))
                .unwrap_or(0)
        };
        let nodes = self.nodes.iter().map(|n| (&n.netns, n.underlay));
        let hosts = self.hosts.iter().map(|h| (&h.netns, h.underlay));
        for (netns, addr) in nodes.chain(hosts) {
            members[index(addr)].push((netns.clone(), "eth0".to_owned(), addr));
        }
        if let Some(router) = &self.router {
            for (i, subnet) in self.subnets.iter().enumerate() {
                members[i].push((router.clone(), format!("eth{i}"), router_address(*subnet)));
            }
        }
        members
    }

    /// ARP entries the underlay needs when every node talks to every other
    /// node on its segment: m(m−1) per segment of m interfaces.
    pub fn underlay_arp_entries(&self) -> usize {
        self.segment_members()
            .iter()
            .map(|m| m.len() * m.len().saturating_sub(1))
            .sum()
    }

    /// Pins the underlay's ARP entries: every interface on a segment gets a
    /// permanent neighbour entry for every other one. The kernel keeps one
    /// ARP table for all namespaces and holds at most [`arp_table_limit`]
    /// entries in it that are not permanent; a cluster whose nodes all talk
    /// needs [`Cluster::underlay_arp_entries`] of them, so a large one would
    /// see ARP fail ("neighbor table overflow") and packets vanish. Permanent
    /// entries do not count. Returns how many entries it wrote.
    pub fn pin_underlay_neighbours(&self) -> Result<usize, TopologyError> {
        let mut written = 0;
        for members in self.segment_members() {
            let mut macs = Vec::with_capacity(members.len());
            for (netns, dev, _) in &members {
                let out =
                    checked(Command::new("ip").args(["-n", netns, "-j", "link", "show", dev]))?;
                let mac = serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|v| v.get(0)?.get("address")?.as_str().map(str::to_owned))
                    .ok_or_else(|| TopologyError::Parse {
                        tool: "ip -j link",
                        detail: format!("no address of {dev} in {netns}: {out}"),
                    })?;
                macs.push(mac);
            }
            for (i, (netns, dev, _)) in members.iter().enumerate() {
                let mut batch = String::new();
                for (j, (_, _, addr)) in members.iter().enumerate() {
                    if i != j {
                        let _ = writeln!(
                            batch,
                            "neigh replace {addr} lladdr {} dev {dev} nud permanent",
                            macs[j]
                        );
                        written += 1;
                    }
                }
                ip_batch(netns, &batch)?;
            }
        }
        Ok(written)
    }
}

/// Runs `ip -n NETNS -batch -` on `commands`.
fn ip_batch(netns: &str, commands: &str) -> Result<(), TopologyError> {
    let command = format!("ip -n {netns} -batch -");
    let spawn_err = |source| TopologyError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TopologyError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A veth pair: `port` on `switch`'s bridge, `dev` in `netns`.
fn veth_into_bridge(
    switch: &str,
    port: &str,
    netns: &str,
    dev: &str,
    mtu: &str,
) -> Result<(), TopologyError> {
    ip(&[
        "-n", switch, "link", "add", port, "mtu", mtu, "type", "veth", "peer", "name", dev, "mtu",
        mtu, "netns", netns,
    ])?;
    ip(&["-n", switch, "link", "set", port, "master", "br0", "up"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::HostSpec;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn two_subnets() -> ClusterSpec {
        let mut spec = ClusterSpec::generated(4, 1)
            .with_subnets(vec![net("172.16.35.0/24"), net("172.16.36.0/24")]);
        for (i, node) in spec.nodes.iter_mut().enumerate() {
            node.underlay = Ipv4Addr::new(172, 16, 35 + (i % 2) as u8, 4 + i as u8);
        }
        spec.with_host(HostSpec::new("rr1", Ipv4Addr::new(172, 16, 35, 201)))
    }

    #[test]
    fn reserved_names() {
        for name in ["switch", "switch2", "switch10", "router"] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["switchboard", "rr1", "node1", "routers"] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn a_valid_two_subnet_spec_plans_two_switches_and_a_router() {
        let spec = two_subnets();
        spec.validate().unwrap();
        let (switches, router) = plan(&spec, "t");
        assert_eq!(switches, ["tunl-t-switch", "tunl-t-switch2"]);
        assert_eq!(router.as_deref(), Some("tunl-t-router"));
        assert_eq!(
            spec.segment_of(Ipv4Addr::new(172, 16, 36, 5)),
            Some(net("172.16.36.0/24"))
        );
        assert_eq!(
            router_address(net("172.16.36.0/24")),
            Ipv4Addr::new(172, 16, 36, 1)
        );
    }

    #[test]
    fn one_segment_keeps_the_old_plan() {
        let (switches, router) = plan(&ClusterSpec::seed(), "t");
        assert!(switches.is_empty() && router.is_none(), "a veth pair");
        let (switches, _) = plan(&ClusterSpec::generated(3, 1), "t");
        assert_eq!(switches, ["tunl-t-switch"]);
        // Two nodes and a host need the bridge.
        let spec =
            ClusterSpec::seed().with_host(HostSpec::new("rr1", Ipv4Addr::new(172, 16, 1, 1)));
        spec.validate().unwrap();
        assert_eq!(plan(&spec, "t").0.len(), 1);
    }

    #[test]
    fn rejects_bad_segments() {
        let bad = |spec: ClusterSpec| assert!(spec.validate().is_err(), "{spec:?}");
        // A node outside every subnet.
        let mut spec = two_subnets();
        spec.nodes[0].underlay = Ipv4Addr::new(172, 16, 37, 4);
        bad(spec);
        // The router's address.
        let mut spec = two_subnets();
        spec.nodes[0].underlay = Ipv4Addr::new(172, 16, 35, 1);
        bad(spec);
        // Overlapping subnets.
        bad(two_subnets().with_subnets(vec![net("172.16.0.0/16"), net("172.16.36.0/24")]));
        // A host named like a builder namespace, or a node's name.
        bad(two_subnets().with_host(HostSpec::new("router", Ipv4Addr::new(172, 16, 35, 202))));
        bad(two_subnets().with_host(HostSpec::new("node1", Ipv4Addr::new(172, 16, 35, 202))));
        // Two at one address.
        bad(two_subnets().with_host(HostSpec::new("rr2", Ipv4Addr::new(172, 16, 35, 201))));
        // On-link overlays across a router.
        bad(two_subnets().with_overlay(Overlay::Direct));
    }
}
