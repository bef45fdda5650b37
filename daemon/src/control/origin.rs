//! A route's origin as the protocol names it: its routing protocol
//! (`proto`) as `ip route` spells the well-known ones, `tunl` for tunl's
//! own (116), else the number.
//!
//! The name is a `Cow<'static, str>`, borrowed for every known protocol,
//! when written and when read (`status` carries one per block: at 100k
//! routes a `String` each was a measurable part of both sides' time).

use std::borrow::Cow;
use std::fmt;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer};

use crate::daemon::ROUTE_PROTOCOL;

/// The well-known protocols, by number.
const NAMES: [(u8, &str); 24] = [
    (ROUTE_PROTOCOL, "tunl"),
    (12, "bird"),
    (0, "unspec"),
    (1, "redirect"),
    (2, "kernel"),
    (3, "boot"),
    (4, "static"),
    (8, "gated"),
    (9, "ra"),
    (10, "mrt"),
    (11, "zebra"),
    (13, "dnrouted"),
    (14, "xorp"),
    (15, "ntk"),
    (16, "dhcp"),
    (17, "mrouted"),
    (18, "keepalived"),
    (42, "babel"),
    (99, "openr"),
    (186, "bgp"),
    (187, "isis"),
    (188, "ospf"),
    (189, "rip"),
    (192, "eigrp"),
];

/// The name of routing protocol `protocol`.
pub fn name(protocol: u8) -> Cow<'static, str> {
    match NAMES.iter().find(|(p, _)| *p == protocol) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(protocol.to_string()),
    }
}

/// `text` as a borrowed name when it is a known one, else owned.
fn read(text: &str) -> Cow<'static, str> {
    match NAMES.iter().find(|(_, name)| *name == text) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(text.to_owned()),
    }
}

/// Deserializes an origin (any string), without an allocation for a known
/// name.
///
/// # Errors
/// The deserializer's, for anything but a string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'static, str>, D::Error> {
    d.deserialize_str(OriginVisitor)
}

struct OriginVisitor;

impl Visitor<'_> for OriginVisitor {
    type Value = Cow<'static, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a route origin, such as \"bird\"")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(read(v))
    }
}

/// One origin, through [`deserialize`].
struct Origin(Cow<'static, str>);

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Origin, D::Error> {
        deserialize(d).map(Origin)
    }
}

/// The same for a list of origins.
pub mod list {
    use super::*;

    /// Deserializes an array of origins.
    ///
    /// # Errors
    /// The deserializer's.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Cow<'static, str>>, D::Error> {
        let origins = Vec::<Origin>::deserialize(d)?;
        Ok(origins.into_iter().map(|o| o.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(name(12), "bird");
        assert_eq!(name(116), "tunl");
        assert_eq!(name(200), "200");
        assert!(matches!(name(4), Cow::Borrowed("static")));
        // Each number and each name once.
        for (i, (p, n)) in NAMES.iter().enumerate() {
            assert!(
                NAMES[i + 1..].iter().all(|(q, m)| q != p && m != n),
                "{p} {n}"
            );
        }
    }

    #[test]
    fn read_borrows_known_names() {
        #[derive(Deserialize)]
        struct Both {
            #[serde(deserialize_with = "super::deserialize")]
            one: Cow<'static, str>,
            #[serde(deserialize_with = "super::list::deserialize")]
            many: Vec<Cow<'static, str>>,
        }
        let b: Both =
            serde_json::from_str(r#"{"one":"bird","many":["tunl","200","x\"y"]}"#).unwrap();
        assert!(matches!(b.one, Cow::Borrowed("bird")));
        assert!(matches!(b.many[0], Cow::Borrowed("tunl")));
        assert_eq!(b.many, ["tunl", "200", "x\"y"]);
        let b: Both = serde_json::from_reader(&br#"{"one":"static","many":[]}"#[..]).unwrap();
        assert!(matches!(b.one, Cow::Borrowed("static")));
        assert!(serde_json::from_str::<Both>(r#"{"one":7,"many":[]}"#).is_err());
    }
}
