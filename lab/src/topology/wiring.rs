//! Building a cluster's namespaces: the underlay (one veth pair for two
//! nodes, otherwise a bridge in a switch namespace), the pods wired the way
//! Calico's CNI plugin wires them (a `cali*` veth with proxy ARP, a /32 and a
//! default route via 169.254.1.1), the [`Overlay::Direct`] routes and the
//! sysctls. Needs `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`, checked first.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;

use caps::{CapSet, Capability};

use super::{Cluster, Overlay, TopologyError, checked, ip};

/// The pods' default gateway, answered by proxy ARP on the node's `cali*` veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// MAC address of every node-side `cali*` veth, as Calico sets it.
pub const CALI_MAC: &str = "ee:ee:ee:ee:ee:ee";

impl Cluster {
    /// Creates and wires every namespace; records each namespace as soon as
    /// it exists so a failure part-way is cleaned up by `Drop`.
    pub(super) fn wire(&mut self) -> Result<(), TopologyError> {
        let mtu = self.underlay_mtu.to_string();
        let pod_mtu = self.pod_mtu.to_string();
        let nodes = self.nodes.clone();

        for node in &nodes {
            self.add_netns(&node.netns)?;
            write_sysctls(
                &node.netns,
                &[
                    ("ipv4/ip_forward", "1"),
                    ("ipv4/conf/all/rp_filter", "0"),
                    ("ipv4/conf/default/rp_filter", "0"),
                    ("ipv6/conf/all/disable_ipv6", "1"),
                    ("ipv6/conf/default/disable_ipv6", "1"),
                ],
            )?;
        }

        self.add_hosts()?;
        // Underlay: one veth pair, or a bridge per segment in the switch
        // namespaces (and a router between segments).
        if self.switches.is_empty() {
            let (a, b) = (&nodes[0].netns, &nodes[1].netns);
            ip(&[
                "-n", a, "link", "add", "eth0", "mtu", &mtu, "type", "veth", "peer", "name",
                "eth0", "mtu", &mtu, "netns", b,
            ])?;
        } else {
            self.wire_switches()?;
        }
        for node in &nodes {
            let addr = format!("{}/{}", node.underlay, self.prefix_len(node.underlay));
            ip(&["-n", &node.netns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &node.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
            // Proxy ARP answers only for an address with a unicast route out
            // of another device: give the pods' gateway one, as a node's
            // default route does in a real cluster.
            ip(&[
                "-n",
                &node.netns,
                "route",
                "add",
                &POD_GATEWAY.to_string(),
                "dev",
                "eth0",
                "scope",
                "link",
            ])?;
            write_sysctls(&node.netns, &[("ipv4/conf/eth0/rp_filter", "0")])?;
            self.add_default_route(&node.netns, node.underlay)?;
        }
        self.address_hosts()?;

        // Pods, wired as Calico's CNI plugin wires them.
        for node in &nodes {
            for pod in &node.pods {
                self.add_netns(&pod.netns)?;
                write_sysctls(
                    &pod.netns,
                    &[
                        ("ipv6/conf/all/disable_ipv6", "1"),
                        ("ipv6/conf/default/disable_ipv6", "1"),
                    ],
                )?;
                let (n, p, v) = (node.netns.as_str(), pod.netns.as_str(), pod.veth.as_str());
                ip(&[
                    "-n", n, "link", "add", v, "mtu", &pod_mtu, "type", "veth", "peer", "name",
                    "eth0", "mtu", &pod_mtu, "netns", p,
                ])?;
                ip(&["-n", n, "link", "set", v, "address", CALI_MAC, "up"])?;
                write_sysctls(
                    n,
                    &[
                        (&format!("ipv4/conf/{v}/proxy_arp"), "1"),
                        (&format!("ipv4/conf/{v}/rp_filter"), "0"),
                        (&format!("ipv4/neigh/{v}/proxy_delay"), "0"),
                    ],
                )?;
                let ip32 = format!("{}/32", pod.ip);
                let gw = POD_GATEWAY.to_string();
                ip(&["-n", p, "link", "set", "lo", "up"])?;
                ip(&["-n", p, "addr", "add", &ip32, "dev", "eth0"])?;
                ip(&["-n", p, "link", "set", "eth0", "up"])?;
                ip(&["-n", p, "route", "add", &gw, "dev", "eth0", "scope", "link"])?;
                ip(&[
                    "-n", p, "route", "add", "default", "via", &gw, "dev", "eth0",
                ])?;
                ip(&["-n", n, "route", "add", &ip32, "dev", v, "scope", "link"])?;
            }
        }

        match self.overlay {
            Overlay::None => {}
            Overlay::Direct => {
                for node in &nodes {
                    for (block, via) in self.remote_routes(&node.name) {
                        ip(&[
                            "-n",
                            &node.netns,
                            "route",
                            "add",
                            &block.to_string(),
                            "via",
                            &via.to_string(),
                            "dev",
                            "eth0",
                        ])?;
                    }
                }
            }
            Overlay::Vxlan => self.wire_vxlan(&nodes)?,
        }
        Ok(())
    }

    pub(super) fn add_netns(&mut self, name: &str) -> Result<(), TopologyError> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        Ok(())
    }
}

/// Checks for CAP_NET_ADMIN and CAP_SYS_ADMIN in the effective set (an
/// unreadable set counts as lacking them).
pub(crate) fn check_privileges() -> Result<(), TopologyError> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if has(Capability::CAP_NET_ADMIN) && has(Capability::CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err(TopologyError::NotPrivileged)
    }
}

/// Writes `/proc/sys/net/<key>` values inside a namespace. IPv6 keys are
/// skipped on kernels without IPv6.
pub(super) fn write_sysctls(ns: &str, values: &[(&str, &str)]) -> Result<(), TopologyError> {
    let mut script = String::from("set -e\n");
    for (key, value) in values {
        let path = format!("/proc/sys/net/{key}");
        if key.starts_with("ipv6/") {
            let _ = writeln!(script, "[ ! -e '{path}' ] || echo {value} > '{path}'");
        } else {
            let _ = writeln!(script, "echo {value} > '{path}'");
        }
    }
    checked(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &script])).map(drop)
}
