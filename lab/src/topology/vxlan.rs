//! The kernel VXLAN overlay ([`Overlay::Vxlan`](super::Overlay::Vxlan)),
//! set up as Calico's VXLAN mode does: a `vxlan.calico` device per node with
//! a VTEP address (the block's first address), and static neighbour, fdb and
//! route entries toward every other node, no learning. It is the
//! kernel-tunnel reference `tunl bench` measures tunl against.

use std::process::Command;

use super::wiring::write_sysctls;
use super::{Cluster, Node, TopologyError, checked, ip};

/// Name of the kernel VXLAN device in [`Overlay::Vxlan`](super::Overlay::Vxlan) mode.
pub const VXLAN_DEVICE: &str = "vxlan.calico";

/// VXLAN network identifier, as Calico uses it.
pub const VXLAN_VNI: u32 = 4096;

/// VXLAN UDP destination port, as Calico uses it.
pub const VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN over IPv4 adds (outer IP, UDP, VXLAN, inner Ethernet).
pub const VXLAN_OVERHEAD: u16 = 50;

impl Cluster {
    /// Kernel VXLAN between every pair of nodes, as Calico's VXLAN mode sets
    /// it up: static routes, neighbours and fdb entries, no learning.
    pub(super) fn wire_vxlan(&self, nodes: &[Node]) -> Result<(), TopologyError> {
        let mtu = (self.underlay_mtu - VXLAN_OVERHEAD).to_string();
        let vni = VXLAN_VNI.to_string();
        let port = VXLAN_PORT.to_string();
        for (i, node) in nodes.iter().enumerate() {
            let ns = node.netns.as_str();
            let vtep = node.vtep.expect("VXLAN nodes have a VTEP");
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                VXLAN_DEVICE,
                "mtu",
                &mtu,
                "address",
                &vtep_mac(i),
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &node.underlay.to_string(),
                "dev",
                "eth0",
                "dstport",
                &port,
                "nolearning",
            ])?;
            write_sysctls(ns, &[(&format!("ipv4/conf/{VXLAN_DEVICE}/rp_filter"), "0")])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{vtep}/32"),
                "dev",
                VXLAN_DEVICE,
            ])?;
            ip(&["-n", ns, "link", "set", VXLAN_DEVICE, "up"])?;
            for (j, other) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                let other_vtep = other.vtep.expect("VXLAN nodes have a VTEP").to_string();
                let mac = vtep_mac(j);
                ip(&[
                    "-n",
                    ns,
                    "neigh",
                    "add",
                    &other_vtep,
                    "lladdr",
                    &mac,
                    "dev",
                    VXLAN_DEVICE,
                    "nud",
                    "permanent",
                ])?;
                let mut fdb = Command::new("bridge");
                fdb.args(["-netns", ns, "fdb", "append", &mac, "dev", VXLAN_DEVICE])
                    .args(["dst", &other.underlay.to_string()]);
                checked(&mut fdb)?;
                ip(&[
                    "-n",
                    ns,
                    "route",
                    "add",
                    &other.block.to_string(),
                    "via",
                    &other_vtep,
                    "dev",
                    VXLAN_DEVICE,
                    "onlink",
                ])?;
            }
        }
        Ok(())
    }
}

/// A locally administered unicast MAC for the i-th node's VTEP.
fn vtep_mac(i: usize) -> String {
    format!("66:74:75:6e:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}
