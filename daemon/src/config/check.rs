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
            let duplicate = seen
                .insert(r.prefix, i)
                .map(|j| format!("duplicate prefix {}: also {}", r.prefix, key(j)));
            check_route(t, r, &prefix_key, &via_key, duplicate, p);
        }
        // A next hop must be an underlay address, never inside a pod block
        // (ours or a route's): that would route the tunnel into itself.
        // (A default route is refused above and is no pod block.) The
        // routes' prefixes are looked up by length, 32 lookups per next hop
        // however many routes there are; the first route in order that
        // holds it is named, as a scan would.
        let mut by_prefix: HashMap<Ipv4Network, usize> = HashMap::new();
        let mut lengths = [false; 33];
        for (j, r) in self.routes.iter().enumerate() {
            if let (true, Ok(net)) = (
                r.prefix.prefix() > 0,
                Ipv4Network::new(r.prefix.network(), r.prefix.prefix()),
            ) {
                by_prefix.entry(net).or_insert(j);
                lengths[usize::from(r.prefix.prefix())] = true;
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let pod_block = t
                .blocks
                .iter()
                .filter(|b| b.prefix() > 0)
                .find(|b| b.contains(r.via))
                .copied()
                .or_else(|| {
                    route_holding(&by_prefix, &lengths, r.via).map(|j| self.routes[j].prefix)
                });
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

/// The rules of one route on its own (`duplicate`: the problem if its
/// prefix came before, recorded after the prefix's own).
fn check_route(
    t: &super::TunnelSection,
    r: &super::RouteEntry,
    prefix_key: &str,
    via_key: &str,
    duplicate: Option<String>,
    p: &mut Problems,
) {
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
        return;
    }
    if let Err(e) = check_prefix(&r.prefix) {
        p.push(prefix_key, e.to_string());
    }
    if let Some(d) = duplicate {
        p.push(prefix_key, d);
    }
    if !is_unicast(r.via) {
        p.push(via_key, format!("{} is not a unicast host address", r.via));
    } else if r.via == t.local {
        p.push(
            via_key,
            format!("{} is this node's own address (tunnel.local)", r.via),
        );
    }
    if let Some(b) = t.blocks.iter().find(|b| b.overlaps(r.prefix)) {
        p.push(
            prefix_key,
            format!("{} overlaps this node's own block {b}", r.prefix),
        );
    } else if r.prefix.contains(t.local) && is_unicast(t.local) {
        p.push(
            prefix_key,
            format!(
                "{} contains this node's own address {} (tunnel.local): the route \
                 would take the underlay's traffic into the tunnel",
                r.prefix, t.local
            ),
        );
    }
}

impl Config {
    /// Checks that `routes` (a valid route set, as the config's rules
    /// want it) stays valid with `prefix via via` added to it (or moved
    /// there): the same rules as a whole set, at a cost that does not grow
    /// with it but for one pass over its next hops. Returns the problems,
    /// for a person, as a whole check would word them.
    ///
    /// # Errors
    /// The problems, joined with `; `.
    pub fn check_added_route(
        &self,
        routes: &std::collections::BTreeMap<Ipv4Network, Ipv4Addr>,
        prefix: Ipv4Network,
        via: Ipv4Addr,
    ) -> Result<(), String> {
        let t = &self.tunnel;
        let mut p = Problems::default();
        let entry = super::RouteEntry { prefix, via };
        check_route(t, &entry, "prefix", "via", None, &mut p);
        if prefix.prefix() > 0 && !p.has("via") {
            let holder = t
                .blocks
                .iter()
                .filter(|b| b.prefix() > 0)
                .find(|b| b.contains(via))
                .copied()
                .or_else(|| {
                    (1..=32u8).find_map(|len| {
                        let net = Ipv4Network::new(via, len).ok()?;
                        let net = Ipv4Network::new(net.network(), len).ok()?;
                        (net == prefix || routes.contains_key(&net)).then_some(net)
                    })
                });
            if let Some(b) = holder {
                p.push(
                    "via",
                    format!(
                        "{via} is inside the pod block {b}; `via` must be a node's underlay address"
                    ),
                );
            }
            // A route already there whose next hop the new block would hold.
            if let Some((_, v)) = routes
                .iter()
                .find(|(q, v)| **q != prefix && prefix.contains(**v))
            {
                p.push(
                    "routes",
                    format!("{v} is inside the pod block {prefix}; `via` must be a node's underlay address"),
                );
            }
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(p
                .0
                .iter()
                .map(|q| q.problem.as_str())
                .collect::<Vec<_>>()
                .join("; "))
        }
    }
}

/// The index of the first route (in `by_prefix`, by prefix to first index)
/// whose prefix holds `addr`, looking only at the prefix lengths in use.
fn route_holding(
    by_prefix: &HashMap<Ipv4Network, usize>,
    lengths: &[bool; 33],
    addr: Ipv4Addr,
) -> Option<usize> {
    (1..=32u8)
        .filter(|&len| lengths[usize::from(len)])
        .filter_map(|len| {
            let net = Ipv4Network::new(addr, len).ok()?;
            let net = Ipv4Network::new(net.network(), len).ok()?;
            by_prefix.get(&net).copied()
        })
        .min()
}
