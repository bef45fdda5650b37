//! The kernel routes BIRD installs, as `ip -j route` shows them.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Deserialize;

use crate::topology::TopologyError;

/// One kernel route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// Destination.
    pub dst: Ipv4Network,
    /// Route type: `unicast`, `blackhole`, ...
    pub kind: String,
    /// Gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output device, if any.
    pub dev: Option<String>,
    /// Whether the `onlink` flag is set.
    pub onlink: bool,
}

#[derive(Deserialize)]
struct Json {
    dst: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    gateway: Option<Ipv4Addr>,
    dev: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
}

/// Parses `ip -j route show ...` (IPv4 routes; `default` is 0.0.0.0/0, a
/// bare address a /32).
pub fn parse_routes(json: &str) -> Result<Vec<KernelRoute>, TopologyError> {
    let bad = |detail: String| TopologyError::Parse {
        tool: "ip -j route",
        detail,
    };
    let text = json.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Json> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    rows.into_iter()
        .map(|r| {
            let dst = match r.dst.as_str() {
                "default" => {
                    Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).map_err(|e| bad(e.to_string()))
                }
                d if d.contains('/') => d.parse().map_err(|e| bad(format!("{d}: {e}"))),
                d => d
                    .parse::<Ipv4Addr>()
                    .map_err(|e| bad(format!("{d}: {e}")))
                    .and_then(|a| Ipv4Network::new(a, 32).map_err(|e| bad(e.to_string()))),
            }?;
            Ok(KernelRoute {
                dst,
                kind: r.kind.unwrap_or_else(|| "unicast".to_owned()),
                gateway: r.gateway,
                dev: r.dev,
                onlink: r.flags.iter().any(|f| f == "onlink"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bird_routes() {
        let json = r#"[{"type":"blackhole","dst":"10.20.0.0/26","metric":32,"flags":[]},
            {"dst":"10.20.0.64/26","gateway":"172.16.36.5","dev":"tunl0","metric":32,"flags":["onlink"]},
            {"dst":"10.20.0.128/26","gateway":"172.16.35.6","dev":"eth0","metric":32,"flags":[]},
            {"dst":"default","gateway":"172.16.35.1","dev":"eth0","flags":[]},
            {"dst":"10.20.255.193","dev":"lo","flags":[]}]"#;
        let r = parse_routes(json).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].kind, "blackhole");
        assert_eq!(r[0].gateway, None);
        assert_eq!(r[1].dev.as_deref(), Some("tunl0"));
        assert!(r[1].onlink);
        assert_eq!(r[1].gateway, Some(Ipv4Addr::new(172, 16, 36, 5)));
        assert!(!r[2].onlink);
        assert_eq!(r[3].dst.prefix(), 0);
        assert_eq!(r[4].dst.prefix(), 32);
        assert!(parse_routes("").unwrap().is_empty());
        assert!(parse_routes("[]").unwrap().is_empty());
        assert!(parse_routes("nonsense").is_err());
    }
}
