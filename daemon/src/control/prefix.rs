//! A prefix's text on the wire (`"10.20.105.192/26"`), written without
//! `fmt` and read without an allocation.
//!
//! `status` and `route_list` carry every block: at 100k routes,
//! `Ipv4Network`'s own serde (`collect_str` over `Display`, and a `String`
//! per prefix when read) took most of the reply's encoding and decoding
//! time. The text is the same either way, and a prefix is read as
//! [`parse_prefix`] reads it (the length is required).
//!
//! Use with `#[serde(with = "crate::control::prefix")]` on an
//! `Ipv4Network`, or `crate::control::prefix::list` on a
//! `Vec<Ipv4Network>`.

use std::fmt;

use ipnetwork::Ipv4Network;
use serde::de::Visitor;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::parse_prefix;

/// The longest prefix text: `255.255.255.255/32`.
const LONGEST: usize = 18;

/// Writes `prefix` as `a.b.c.d/len` into `buf`, returning the text.
pub fn text(prefix: Ipv4Network, buf: &mut [u8; LONGEST]) -> &str {
    let mut n = 0;
    for (i, octet) in prefix.ip().octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        n = decimal(buf, n, octet);
    }
    buf[n] = b'/';
    n = decimal(buf, n + 1, prefix.prefix());
    // Only ASCII digits, dots and the slash were written.
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// Writes `v` in decimal at `buf[at..]`, returning the end.
fn decimal(buf: &mut [u8; LONGEST], mut at: usize, v: u8) -> usize {
    if v >= 100 {
        buf[at] = b'0' + v / 100;
        at += 1;
    }
    if v >= 10 {
        buf[at] = b'0' + v / 10 % 10;
        at += 1;
    }
    buf[at] = b'0' + v % 10;
    at + 1
}

/// Serializes one prefix as its text.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(prefix: &Ipv4Network, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(text(*prefix, &mut [0; LONGEST]))
}

/// Deserializes one prefix from its text, as [`parse_prefix`] reads it.
///
/// # Errors
/// The deserializer's error carrying the `PrefixError` message.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Network, D::Error> {
    d.deserialize_str(PrefixVisitor)
}

struct PrefixVisitor;

impl Visitor<'_> for PrefixVisitor {
    type Value = Ipv4Network;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a prefix with its length, such as \"10.20.105.192/26\"")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Ipv4Network, E> {
        parse_prefix(v).map_err(E::custom)
    }
}

/// One prefix, through [`serialize`] and [`deserialize`].
struct Text(Ipv4Network);

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        deserialize(d).map(Text)
    }
}

/// The same for a list of prefixes.
pub mod list {
    use super::*;

    /// Serializes the prefixes as an array of their texts.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(prefixes: &[Ipv4Network], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(prefixes.len()))?;
        for &p in prefixes {
            seq.serialize_element(&Text(p))?;
        }
        seq.end()
    }

    /// Deserializes an array of prefix texts.
    ///
    /// # Errors
    /// The deserializer's, or a prefix's.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Network>, D::Error> {
        let texts = Vec::<Text>::deserialize(d)?;
        Ok(texts.into_iter().map(|t| t.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn text_is_what_display_writes() {
        let mut buf = [0; LONGEST];
        for (addr, len) in [
            ([0, 0, 0, 0], 0),
            ([10, 20, 105, 192], 26),
            ([255, 255, 255, 255], 32),
            ([1, 10, 100, 9], 8),
            ([192, 168, 0, 99], 24),
        ] {
            let p = Ipv4Network::new(Ipv4Addr::from(addr), len).unwrap();
            assert_eq!(text(p, &mut buf), p.to_string());
        }
        // Every octet value, in every position.
        for v in 0..=255u8 {
            let p = Ipv4Network::new(Ipv4Addr::new(v, v / 3, 255 - v, v), v % 33).unwrap();
            assert_eq!(text(p, &mut buf), p.to_string());
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct One {
        #[serde(with = "super")]
        p: Ipv4Network,
        #[serde(with = "super::list")]
        ps: Vec<Ipv4Network>,
    }

    #[test]
    fn round_trips_and_matches_ipnetwork_serde() {
        let p: Ipv4Network = "10.20.105.192/26".parse().unwrap();
        let one = One {
            p,
            ps: vec![p, "10.0.0.0/8".parse().unwrap()],
        };
        let json = serde_json::to_string(&one).unwrap();
        assert_eq!(
            json,
            format!(
                "{{\"p\":{},\"ps\":{}}}",
                serde_json::to_string(&one.p).unwrap(),
                serde_json::to_string(&one.ps).unwrap()
            )
        );
        assert_eq!(serde_json::from_str::<One>(&json).unwrap(), one);
        // Read from a stream too (no borrowed text there).
        assert_eq!(
            serde_json::from_reader::<_, One>(json.as_bytes()).unwrap(),
            one
        );
    }

    #[test]
    fn refuses_what_parse_prefix_refuses() {
        for bad in [
            r#"{"p":"10.20.105.192","ps":[]}"#,
            r#"{"p":"10.20.105.192/33","ps":[]}"#,
            r#"{"p":"10.0.0.0/8","ps":["nope"]}"#,
            r#"{"p":"10.0.0.0/8","ps":["10.0.0.0/8",7]}"#,
            r#"{"p":7,"ps":[]}"#,
            r#"{"p":"10.0.0.0/8","ps":"10.0.0.0/8"}"#,
        ] {
            assert!(serde_json::from_str::<One>(bad).is_err(), "{bad}");
        }
        let e = serde_json::from_str::<One>(r#"{"p":"10.20.105.192","ps":[]}"#).unwrap_err();
        assert!(e.to_string().contains("length"), "{e}");
    }
}
