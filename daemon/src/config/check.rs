//! The rules between keys, checked on a config that read whole (and on the
//! route sets the control socket brings): every problem is recorded.
//!
//! Values are already of the right type and range ([`super::read`]); here:
//! the device name, the local address, no host bits, no duplicate, no
//! default route, no route over this node's own block or address, next
//! hops that are underlay addresses.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{Config, Problems, check_prefix};

fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
}

impl Config {
    /// Records every rule this config breaks; `route_keys[i]` is the index
    /// under which route `i` is named (`route[N]`, its place in the file).
    pub(super) fn check(&self, route_keys: &[usize], p: &mut Problems) {
        let t = &self.tunnel;
        if t.name.is_empty()
            || t.name.len() > 15
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            p.push(
                "tunnel.name",
                format!(
                    "{:?} is not a valid interface name (1 to 15 characters: letters, digits, - _ .)",
                    t.name
                ),
            );
        }
        if !is_unicast(t.local) {
            p.push(
                "tunnel.local",
                format!("{} is not a unicast host address", t.local),
            );
        }
        for (i, block) in t.blocks.iter().enumerate() {
            if let Err(e) = check_prefix(block) {
                p.push(format!("tunnel.blocks[{i}]"), e.to_string());
            }
        }
        for (i, a) in self.security.allow.iter().enumerate() {
            if let Err(e) = check_prefix(a) {
                p.push(format!("security.allow[{i}]"), e.to_string());
            }
        }
        self.check_routes(route_keys, p);
        if let Some(user) = &self.security.user {
            if user.is_empty() || user.contains(['/', ':', '\0']) {
                p.push("security.user", format!("{user:?} is not a user name"));
            }
        }
        let d = &self.dataplane;
        if d.poll_quiet_us != 0 && d.poll_quiet_us < d.poll_interval_us {
            p.push(
                "dataplane.poll_quiet_us",
                format!(
                    "{} is shorter than poll_interval_us ({}); use at least that, or 0 to turn \
                     the timer polling off",
                    d.poll_quiet_us, d.poll_interval_us
                ),
            );
        }
    }

    fn check_routes(&self, route_keys: &[usize], p: &mut Problems) {
        let t = &self.tunnel;
        let key = |i: usize| format!("route[{}]", route_keys.get(i).copied().unwrap_or(i));
        let mut seen: HashMap<Ipv4Network, usize> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let (prefix_key, via_key) = (format!("{}.prefix", key(i)), format!("{}.via", key(i)));
            if r.prefix.prefix() == 0 {
                p.push(
                    prefix_key,
                    format!(
                        "{} would be a default route into the tunnel: every destination \
                         without a more specific route would go to {}, and installing it \
                         would replace the host's own default route; route the pod blocks \
                         (e.g. 10.20.105.192/26) or the IP pool (e.g. 10.20.0.0/16) instead",
                        r.prefix, r.via
                    ),
                );
                continue;
            }
            if let Err(e) = check_prefix(&r.prefix) {
                p.push(&prefix_key, e.to_string());
            }
            if let Some(j) = seen.insert(r.prefix, i) {
                p.push(
                    &prefix_key,
                    format!("duplicate prefix {}: also {}", r.prefix, key(j)),
                );
            }
            if !is_unicast(r.via) {
                p.push(&via_key, format!("{} is not a unicast host address", r.via));
            } else if r.via == t.local {
                p.push(
                    &via_key,
                    format!("{} is this node's own address (tunnel.local)", r.via),
                );
            }
            if let Some(b) = t.blocks.iter().find(|b| b.overlaps(r.prefix)) {
                p.push(
                    &prefix_key,
                    format!("{} overlaps this node's own block {b}", r.prefix),
                );
            } else if r.prefix.contains(t.local) && is_unicast(t.local) {
                p.push(
                    &prefix_key,
                    format!(
                        "{} contains this node's own address {} (tunnel.local): the route \
                         would take the underlay's traffic into the tunnel",
                        r.prefix, t.local
                    ),
                );
            }
        }
        // A next hop must be an underlay address, never inside a pod block
        // (ours or a route's): that would route the tunnel into itself.
        // (A default route is refused above and is no pod block.)
        // The routes' blocks in an LPM table, so this is one lookup per
        // route, not a scan of every route (100k routes made it 10^10).
        let mut route_blocks = tunl_routing::Lpm::new();
        for r in self.routes.iter().filter(|r| r.prefix.prefix() > 0) {
            route_blocks.insert(r.prefix, r.prefix);
        }
        for (i, r) in self.routes.iter().enumerate() {
            let pod_block = t
                .blocks
                .iter()
                .filter(|b| b.prefix() > 0)
                .find(|b| b.contains(r.via))
                .copied()
                .or_else(|| route_blocks.lookup(r.via));
            if let Some(b) = pod_block {
                p.push(
                    format!("{}.via", key(i)),
                    format!(
                        "{} is inside the pod block {b}; `via` must be a node's underlay address",
                        r.via
                    ),
                );
            }
        }
    }
}
