//! What the route table (LPM) maps a block to: a [`NextHop`], resolved per
//! packet to the node the outer packet goes to.
//!
//! A next hop is `Copy` and 8 bytes, so the LPM's slots stay small and a
//! lookup stays one probe. A multipath route's next hops do not fit in it:
//! the LPM holds an index into the [`MultipathGroup`]s the control plane
//! publishes with the [`Policy`](super::Policy), and the group picks one
//! next hop per flow from a hash of the inner addresses ([`flow_hash`]).

use std::net::Ipv4Addr;

/// Where the packets of a route go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// To this node (the route's gateway, `via NODE`).
    Node(Ipv4Addr),
    /// A route without a gateway (`dev tunl0` alone): toward the inner
    /// destination itself, as the kernel's tunl0 does.
    Direct,
    /// One of the next hops of the multipath group at this index in
    /// [`Policy::multipath`](super::Policy::multipath), chosen per flow.
    Multipath(u32),
}

/// One next hop of a multipath group: a node (`None`: the inner
/// destination) and its weight.
pub type GroupMember = (Option<Ipv4Addr>, u16);

/// The next hops of a multipath route on tunl's device, with their weights
/// (`nexthop via A weight 1 nexthop via B weight 2`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MultipathGroup {
    members: Box<[GroupMember]>,
    total: u32,
}

impl MultipathGroup {
    /// A group of these next hops (a weight of 0 counts as 1).
    pub fn new(members: &[GroupMember]) -> MultipathGroup {
        let members: Box<[GroupMember]> = members.iter().map(|&(n, w)| (n, w.max(1))).collect();
        let total = members.iter().map(|&(_, w)| u32::from(w)).sum();
        MultipathGroup { members, total }
    }

    /// The next hops and weights.
    pub fn members(&self) -> &[GroupMember] {
        &self.members
    }

    /// The next hop for a flow whose [`flow_hash`] is `hash` and whose
    /// inner destination is `dst`: each member gets a share of the hash
    /// space in proportion to its weight. `None` for an empty group.
    #[inline]
    pub fn pick(&self, hash: u32, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.total == 0 {
            return None;
        }
        // Scale the hash into [0, total) without a division.
        let mut point = ((u64::from(hash) * u64::from(self.total)) >> 32) as u32;
        for &(node, weight) in self.members.iter() {
            let weight = u32::from(weight);
            if point < weight {
                return Some(node.unwrap_or(dst));
            }
            point -= weight;
        }
        None
    }
}

/// The hash of a flow that picks its next hop in a multipath group: the
/// inner source and destination addresses (the kernel's default L3 policy,
/// `fib_multipath_hash_policy = 0`), so every packet of a flow takes the
/// same next hop. It is not the kernel's hash: which next hop the kernel
/// picked is not visible in the packet it hands to the device.
#[inline]
pub fn flow_hash(src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
    let x = (u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst));
    // A 64-bit finaliser (splitmix64's), so nearby addresses spread.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);
    const B: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 6);

    #[test]
    fn a_next_hop_is_small() {
        assert_eq!(std::mem::size_of::<NextHop>(), 8);
    }

    #[test]
    fn members_share_the_flows_by_weight_and_a_flow_keeps_its_member() {
        let g = MultipathGroup::new(&[(Some(A), 1), (Some(B), 3)]);
        let dst = Ipv4Addr::new(10, 20, 1, 1);
        let mut to_a = 0;
        for i in 0..4000u32 {
            let src = Ipv4Addr::from(0x0a14_2a00 + i);
            let hash = flow_hash(src, dst);
            let first = g.pick(hash, dst).unwrap();
            assert_eq!(g.pick(flow_hash(src, dst), dst), Some(first));
            if first == A {
                to_a += 1;
            } else {
                assert_eq!(first, B);
            }
        }
        // A quarter of the flows, within a generous margin.
        assert!((800..1200).contains(&to_a), "{to_a} of 4000 flows to A");
        // The extremes of the hash space land on the first and last member.
        assert_eq!(g.pick(0, dst), Some(A));
        assert_eq!(g.pick(u32::MAX, dst), Some(B));
    }

    #[test]
    fn a_member_without_a_gateway_is_the_inner_destination() {
        let g = MultipathGroup::new(&[(None, 0)]);
        let dst = Ipv4Addr::new(10, 20, 1, 1);
        assert_eq!(g.pick(12345, dst), Some(dst));
        assert_eq!(MultipathGroup::default().pick(1, dst), None);
    }
}
