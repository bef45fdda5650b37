//! Why a packet was dropped.

use std::fmt;

/// Why a packet was dropped. Counters index by `as usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum DropReason {
    /// An outer packet from a source that is not a known node (CVE-2020-10136).
    UnknownSource,
    /// The outer header is not a whole, valid, unfragmented IPIP packet.
    MalformedOuter,
    /// The inner packet is not a whole, valid IPv4 packet.
    MalformedInner,
    /// Inner Not-ECT under an outer CE (RFC 6040 says drop).
    EcnDrop,
    /// No route to the inner destination.
    NoRoute,
    /// The inner packet is longer than the tunnel MTU and may not be fragmented.
    TooBig,
    /// The inner TTL is 0.
    TtlExpired,
    /// The inner packet is itself IPIP and nesting is not allowed.
    NestedIpip,
    /// The inner destination is outside this node's pod blocks.
    NotLocal,
    /// The packet read from the device is one of tunl's own outer packets
    /// (IPIP from `tunnel.local`): its destination routes back into the
    /// device, e.g. through a route without gateway. The kernel's tunl0
    /// drops these as a local routing loop.
    TunnelLoop,
    /// The local underlay address (the outer source) is no longer an
    /// address of this node: nothing is sent from it.
    NoLocalAddress,
    /// With `security.strict_source`: the inner source is neither in a
    /// block routed via the outer source nor the outer source itself.
    InnerSourceMismatch,
    /// The inner source is inside this node's own blocks, but the packet
    /// came from another node (always refused).
    InnerSourceOwnBlock,
}

impl DropReason {
    /// The number of reasons; the length of a counter array.
    pub const COUNT: usize = 13;

    /// Every reason, in `as usize` order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::UnknownSource,
        Self::MalformedOuter,
        Self::MalformedInner,
        Self::EcnDrop,
        Self::NoRoute,
        Self::TooBig,
        Self::TtlExpired,
        Self::NestedIpip,
        Self::NotLocal,
        Self::TunnelLoop,
        Self::NoLocalAddress,
        Self::InnerSourceMismatch,
        Self::InnerSourceOwnBlock,
    ];

    /// The snake_case name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::MalformedOuter => "malformed_outer",
            Self::MalformedInner => "malformed_inner",
            Self::EcnDrop => "ecn_drop",
            Self::NoRoute => "no_route",
            Self::TooBig => "too_big",
            Self::TtlExpired => "ttl_expired",
            Self::NestedIpip => "nested_ipip",
            Self::NotLocal => "not_local",
            Self::TunnelLoop => "tunnel_loop",
            Self::NoLocalAddress => "no_local_address",
            Self::InnerSourceMismatch => "inner_source_mismatch",
            Self::InnerSourceOwnBlock => "inner_source_own_block",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownSource => "unknown source",
            Self::MalformedOuter => "malformed outer",
            Self::MalformedInner => "malformed inner",
            Self::EcnDrop => "ECN drop",
            Self::NoRoute => "no route",
            Self::TooBig => "too big",
            Self::TtlExpired => "TTL expired",
            Self::NestedIpip => "nested IPIP",
            Self::NotLocal => "not local",
            Self::TunnelLoop => "tunnel loop",
            Self::NoLocalAddress => "no local address",
            Self::InnerSourceMismatch => "inner source mismatch",
            Self::InnerSourceOwnBlock => "inner source own block",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_distinct() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        assert_eq!(DropReason::NestedIpip.as_str(), "nested_ipip");
        assert_eq!(DropReason::UnknownSource.to_string(), "unknown source");
        for r in DropReason::ALL {
            assert_eq!(r.to_string().replace(' ', "_").to_lowercase(), r.as_str());
        }
    }
}
