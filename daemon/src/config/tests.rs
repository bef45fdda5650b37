//! The config as a whole: parsing, defaults, every problem reported, the
//! reload's start-only keys.

use std::num::NonZeroU8;

use super::*;

const SEED: &str = r#"
[tunnel]
name = "tunl0"
local = "172.16.35.4"
mtu = 1480
address = "10.20.42.0/32"
ttl = "inherit"
blocks = ["10.20.42.0/26"]

[[route]]
prefix = "10.20.105.192/26"
via = "172.16.36.5"

[security]
allow = ["172.16.0.0/16"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

/// The first problem of an invalid config: its key and text.
fn invalid_key(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => {
            (problems[0].key.clone(), problems[0].problem.clone())
        }
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

/// Every problem of an invalid config, as `key: problem`.
fn all_problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(e @ ConfigError::Invalid { .. }) => {
            e.problems().iter().map(ToString::to_string).collect()
        }
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

#[test]
fn issue_example_parses() {
    let c = parse(SEED).unwrap();
    assert_eq!(c.tunnel.name, "tunl0");
    assert_eq!(c.tunnel.local, Ipv4Addr::new(172, 16, 35, 4));
    assert_eq!(c.tunnel.mtu, Some(1480));
    assert_eq!(c.tunnel.ttl, Ttl::Inherit);
    assert_eq!(c.tunnel.blocks, vec!["10.20.42.0/26".parse().unwrap()]);
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].via, Ipv4Addr::new(172, 16, 36, 5));
    assert_eq!(c.security.allow.len(), 1);
    assert_eq!(c.dataplane.workers, 1);
}

#[test]
fn shipped_example_parses() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tunl.toml"
    ));
    let c = Config::load(path).unwrap();
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.tunnel.blocks.len(), 1);
}

#[test]
fn strict_source_is_a_boolean() {
    for (value, want) in [("true", true), ("false", false)] {
        let c = parse(&format!(
            "[tunnel]\nlocal = \"172.16.35.4\"\n[security]\nstrict_source = {value}\n"
        ))
        .unwrap();
        assert_eq!(c.security.strict_source, want);
    }
    let e = parse("[tunnel]\nlocal = \"172.16.35.4\"\n[security]\nstrict_source = \"yes\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("security.strict_source") && e.contains("true or false"),
        "{e}"
    );
}

#[test]
fn defaults() {
    let c = parse("[tunnel]\nlocal = \"172.16.35.4\"\n").unwrap();
    assert_eq!(c.tunnel.name, DEFAULT_DEVICE);
    assert_eq!(c.tunnel.mtu, None);
    assert!(c.routes.is_empty());
    assert!(!c.security.allow_nested);
    assert_eq!(c.security.strict_source, DEFAULT_STRICT_SOURCE);
    assert_eq!(c.control.socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    assert_eq!(c.metrics.listen, None);
    assert_eq!(c.security.user, None);
}

#[test]
fn metrics_user_and_with_routes() {
    let text = format!("{SEED}user = \"tunl\"\n\n[metrics]\nlisten = \"127.0.0.1:9099\"\n");
    let c = parse(&text).unwrap();
    assert_eq!(c.security.user.as_deref(), Some("tunl"));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9099".parse().unwrap()));
    assert!(parse(&text.replace("127.0.0.1:9099", "localhost")).is_err());
    let ok = RouteEntry {
        prefix: "10.20.106.0/26".parse().unwrap(),
        via: Ipv4Addr::new(172, 16, 37, 6),
    };
    assert_eq!(c.with_routes(vec![ok]).unwrap().routes, vec![ok]);
    let into_own = RouteEntry {
        prefix: "10.20.42.0/27".parse().unwrap(),
        ..ok
    };
    let err = c.with_routes(vec![ok, into_own]).unwrap_err().to_string();
    assert!(
        err.contains("route[1].prefix") && err.contains("own block"),
        "{err}"
    );
}

#[test]
fn fixed_ttl() {
    let c = parse("[tunnel]\nlocal = \"172.16.35.4\"\nttl = 64\n").unwrap();
    assert_eq!(c.tunnel.ttl, Ttl::Fixed(NonZeroU8::new(64).unwrap()));
    for bad in ["0", "256", "\"always\"", "-1"] {
        let text = format!("[tunnel]\nlocal = \"172.16.35.4\"\nttl = {bad}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("ttl"), "{err}");
    }
}

#[test]
fn missing_local_names_the_key() {
    let err = parse("[tunnel]\nname = \"tunl0\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("local"), "{err}");
}

#[test]
fn unknown_key_is_an_error() {
    let err = parse("[tunnel]\nlocal = \"172.16.35.4\"\nmut = 1400\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mut"), "{err}");
}

/// A key TOML must quote is named quoted, so an empty key is still named
/// (the config fuzz target found `"" = 21` reported with an empty key).
#[test]
fn an_unknown_key_that_needs_quotes_is_named_quoted() {
    let (key, problem) = invalid_key("\"\" = 21\n[tunnel]\nlocal = \"172.16.35.4\"\n");
    assert_eq!(key, "\"\"");
    assert!(problem.starts_with("unknown section"), "{problem}");
    let (key, _) = invalid_key("[tunnel]\nlocal = \"172.16.35.4\"\n\"m t u\" = 1\n");
    assert_eq!(key, "tunnel.\"m t u\"");
    let (key, _) = invalid_key("[tunnel]\nlocal = \"172.16.35.4\"\nm-t_u9 = 1\n");
    assert_eq!(key, "tunnel.m-t_u9");
}

#[test]
fn host_bits_in_prefix() {
    let text = SEED.replace("10.20.105.192/26", "10.20.105.193/26");
    let (key, problem) = invalid_key(&text);
    assert_eq!(key, "route[0].prefix");
    assert!(problem.contains("host bits"), "{problem}");
    assert!(problem.contains("10.20.105.192/26"), "{problem}");
}

#[test]
fn via_inside_a_pod_block() {
    let text = SEED.replace("via = \"172.16.36.5\"", "via = \"10.20.42.7\"");
    let (key, problem) = invalid_key(&text);
    assert_eq!(key, "route[0].via");
    assert!(problem.contains("10.20.42.0/26"), "{problem}");
    let text = SEED.replace("via = \"172.16.36.5\"", "via = \"10.20.105.200\"");
    assert_eq!(invalid_key(&text).0, "route[0].via");
}

#[test]
fn duplicate_prefixes() {
    let text = format!("{SEED}\n[[route]]\nprefix = \"10.20.105.192/26\"\nvia = \"172.16.37.6\"\n");
    let (key, problem) = invalid_key(&text);
    assert_eq!(key, "route[1].prefix");
    assert!(problem.contains("duplicate"), "{problem}");
}

#[test]
fn mtu_range() {
    let (key, _) = invalid_key(&SEED.replace("mtu = 1480", "mtu = 67"));
    assert_eq!(key, "tunnel.mtu");
    assert!(parse(&SEED.replace("mtu = 1480", "mtu = 68")).is_ok());
    assert!(parse(&SEED.replace("mtu = 1480", "mtu = 65515")).is_ok());
    assert!(parse(&SEED.replace("mtu = 1480", "mtu = 70000")).is_err());
}

#[test]
fn reload_keeps_the_keys_that_need_a_restart() {
    let old = parse(SEED).unwrap();
    let edited = SEED
        .replace("172.16.35.4", "172.16.35.9")
        .replace("mtu = 1480", "mtu = 1400")
        .replace("10.20.105.192/26", "10.20.106.0/26")
        .replace("ttl = \"inherit\"", "ttl = 64");
    let new = parse(&format!("{edited}\n[dataplane]\nworkers = 2\n")).unwrap();
    let (running, pending) = old.reloaded(new).unwrap();
    assert_eq!(pending, ["tunnel.local", "tunnel.mtu", "[dataplane]"]);
    assert_eq!(
        running.tunnel.local, old.tunnel.local,
        "local waits for a restart"
    );
    assert_eq!(running.tunnel.mtu, Some(1480));
    assert_eq!(running.dataplane.workers, 1);
    assert_eq!(running.routes[0].prefix, "10.20.106.0/26".parse().unwrap());
    assert_eq!(running.tunnel.ttl, Ttl::Fixed(NonZeroU8::new(64).unwrap()));
    // Validated against the address still in use: a route via it is refused.
    let via_self = parse(
        &SEED
            .replace("172.16.35.4", "172.16.35.9")
            .replace("via = \"172.16.36.5\"", "via = \"172.16.35.4\""),
    )
    .unwrap();
    let e = old.reloaded(via_self).unwrap_err();
    assert_eq!(e.problems()[0].key, "route[0].via", "{e}");
}

#[test]
fn underlay_and_its_deprecated_spelling() {
    let with = |extra: &str| parse(&format!("{SEED}\n[dataplane]\n{extra}\n"));
    assert_eq!(parse(SEED).unwrap().dataplane.underlay(), Underlay::DEFAULT);
    assert_eq!(Underlay::DEFAULT, Underlay::Raw);
    for (text, want) in [
        ("underlay = \"raw\"", Underlay::Raw),
        ("underlay = \"packet\"", Underlay::Packet),
        ("underlay = \"xdp\"", Underlay::Xdp),
        ("underlay = \"auto\"", Underlay::Auto),
        ("packet_tx = true", Underlay::Packet),
        ("packet_tx = false", Underlay::Raw),
    ] {
        assert_eq!(with(text).unwrap().dataplane.underlay(), want, "{text}");
        assert_eq!(want.as_str().parse::<Underlay>(), Ok(want));
    }
    let (key, problem) = invalid_key(&format!("{SEED}\n[dataplane]\nunderlay = \"dpdk\"\n"));
    assert_eq!(key, "dataplane.underlay");
    assert!(problem.contains("\"xdp\""), "{problem}");
    let (key, problem) = invalid_key(&format!(
        "{SEED}\n[dataplane]\nunderlay = \"xdp\"\npacket_tx = true\n"
    ));
    assert_eq!(key, "dataplane.packet_tx");
    assert!(problem.contains("remove packet_tx"), "{problem}");
    let c = with("underlay = \"xdp\"\nxdp_mode = \"native\"").unwrap();
    assert_eq!(c.dataplane.xdp_mode, XdpModeSetting::Native);
    assert_eq!(
        parse(SEED).unwrap().dataplane.xdp_mode,
        XdpModeSetting::Auto
    );
    let (key, _) = invalid_key(&format!("{SEED}\n[dataplane]\nxdp_mode = \"offload\"\n"));
    assert_eq!(key, "dataplane.xdp_mode");
}

#[test]
fn busy_poll_range() {
    let text = format!("{SEED}\n[dataplane]\nbusy_poll_us = 200\n");
    assert_eq!(parse(&text).unwrap().dataplane.busy_poll_us, 200);
    assert_eq!(parse(SEED).unwrap().dataplane.busy_poll_us, 0);
    let (key, problem) = invalid_key(&text.replace("200", "1000001"));
    assert_eq!(key, "dataplane.busy_poll_us");
    assert_eq!(problem, "expected a number 0..=1000000 (µs), found 1000001");
}

#[test]
fn poll_timer_ranges() {
    // The defaults pass the checks below (the quiet spell is at least
    // the interval): parse validates.
    let d = parse(SEED).unwrap().dataplane;
    assert_eq!(d.poll_interval_us, DEFAULT_POLL_INTERVAL_US);
    assert_eq!(d.poll_quiet_us, DEFAULT_POLL_QUIET_US);
    let set = |interval: u32, quiet: u32| {
        format!("{SEED}\n[dataplane]\npoll_interval_us = {interval}\npoll_quiet_us = {quiet}\n")
    };
    let d = parse(&set(100, 5000)).unwrap().dataplane;
    assert_eq!((d.poll_interval_us, d.poll_quiet_us), (100, 5000));
    // 0 turns it off, in either key.
    assert!(parse(&set(0, 5000)).is_ok());
    assert!(parse(&set(100, 0)).is_ok());
    assert!(parse(&set(0, 0)).is_ok());
    assert!(parse(&set(MAX_POLL_INTERVAL_US, MAX_POLL_QUIET_US)).is_ok());
    let (key, problem) = invalid_key(&set(MAX_POLL_INTERVAL_US + 1, MAX_POLL_QUIET_US));
    assert_eq!(key, "dataplane.poll_interval_us");
    assert_eq!(problem, "expected a number 0..=1000 (µs), found 1001");
    let (key, _) = invalid_key(&set(100, MAX_POLL_QUIET_US + 1));
    assert_eq!(key, "dataplane.poll_quiet_us");
    let (key, problem) = invalid_key(&set(100, 99));
    assert_eq!(key, "dataplane.poll_quiet_us");
    assert!(
        problem.contains("shorter than poll_interval_us"),
        "{problem}"
    );
}

#[test]
fn route_into_own_block() {
    let text = format!("{SEED}\n[[route]]\nprefix = \"10.20.42.0/27\"\nvia = \"172.16.37.6\"\n");
    let (key, problem) = invalid_key(&text);
    assert_eq!(key, "route[1].prefix");
    assert!(problem.contains("own block"), "{problem}");
}

#[test]
fn bad_local_and_name() {
    let (key, _) = invalid_key(&SEED.replace("172.16.35.4", "0.0.0.0"));
    assert_eq!(key, "tunnel.local");
    let (key, _) = invalid_key(&SEED.replace("\"tunl0\"", "\"a-very-long-device-name\""));
    assert_eq!(key, "tunnel.name");
    let (key, _) = invalid_key(&SEED.replace("via = \"172.16.36.5\"", "via = \"172.16.35.4\""));
    assert_eq!(key, "route[0].via");
}

#[test]
fn malformed_values_name_their_key() {
    for (from, to, key) in [
        ("\"172.16.35.4\"", "\"172.16.35\"", "tunnel.local"),
        (
            "\"10.20.105.192/26\"",
            "\"10.20.105.192/33\"",
            "route[0].prefix",
        ),
    ] {
        assert_eq!(invalid_key(&SEED.replace(from, to)).0, key);
    }
    assert!(matches!(
        parse("[tunnel\n"),
        Err(ConfigError::Syntax { line: 1, .. })
    ));
}

#[test]
fn every_problem_is_reported_in_the_order_of_the_docs() {
    let text = r#"
[tunnel]
local = "172.16.35.4"
mtu = "abc"
blocks = ["10.20.42.0/26"]

[[route]]
prefix = "10.20.105.192"
via = "172.16.36.5"

[[route]]
prefix = "10.20.42.0/27"
via = "172.16.35.4"

[[route]]
prefix = "10.20.106.1/26"
via = "172.16.36.6"

[dataplane]
workers = 100
"#;
    assert_eq!(
        all_problems(text),
        [
            "tunnel.mtu: expected a number 68..=65515, found \"abc\"",
            "route[0].prefix: \"10.20.105.192\" has no prefix length: write 10.20.105.192/32 \
             for one address, or the block's length (e.g. 10.20.105.192/26)",
            "route[2].prefix: 10.20.106.1/26 has host bits set (did you mean 10.20.106.0/26?)",
            "dataplane.workers: expected a number 1..=64, found 100",
            "route[1].via: 172.16.35.4 is this node's own address (tunnel.local)",
            "route[1].prefix: 10.20.42.0/27 overlaps this node's own block 10.20.42.0/26",
        ]
    );
    let e = parse(text).unwrap_err().to_string();
    assert!(
        e.starts_with("config test.toml: 6 errors: tunnel.mtu: "),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn a_default_route_is_refused_with_what_it_would_mean() {
    let text = SEED.replace("10.20.105.192/26", "0.0.0.0/0");
    assert_eq!(
        all_problems(&text),
        [
            "route[0].prefix: 0.0.0.0/0 would be a default route into the tunnel: every \
          destination without a more specific route would go to 172.16.36.5, and installing \
          it would replace the host's own default route; route the pod blocks \
          (e.g. 10.20.105.192/26) or the IP pool (e.g. 10.20.0.0/16) instead"
        ]
    );
    // A route over this node's own underlay address is refused too.
    let text = SEED.replace("10.20.105.192/26", "172.16.0.0/16");
    assert_eq!(
        all_problems(&text),
        [
            "route[0].prefix: 172.16.0.0/16 contains this node's own address 172.16.35.4 \
             (tunnel.local): the route would take the underlay's traffic into the tunnel",
            "route[0].via: 172.16.36.5 is inside the pod block 172.16.0.0/16; `via` must be a \
             node's underlay address",
        ]
    );
}

#[test]
fn parse_prefix_wants_the_length() {
    assert_eq!(
        parse_prefix("10.20.105.192/26").unwrap(),
        "10.20.105.192/26".parse::<Ipv4Network>().unwrap()
    );
    assert_eq!(
        parse_prefix("10.20.105.192"),
        Err(PrefixError::NoLength("10.20.105.192".to_owned()))
    );
    for bad in [
        "10.20.105.192/",
        "10.20.105.192/33",
        "10.20.105/26",
        "x",
        "1.2.3.4/+2",
        "",
    ] {
        assert_eq!(
            parse_prefix(bad),
            Err(PrefixError::Malformed(bad.to_owned())),
            "{bad}"
        );
    }
    let route: crate::control::Route =
        serde_json::from_str(r#"{"prefix":"10.20.105.192/26","via":"172.16.36.5"}"#).unwrap();
    assert_eq!(route.prefix.prefix(), 26);
    let e = serde_json::from_str::<crate::control::Route>(
        r#"{"prefix":"10.20.105.192","via":"172.16.36.5"}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("has no prefix length"), "{e}");
}
#[test]
fn ttl_reads_into_the_encap_ttl_and_prints_as_written() {
    assert_eq!(parse(SEED).unwrap().tunnel.ttl, Ttl::Inherit);
    assert_eq!(Ttl::Inherit.to_string(), "inherit");
    let c = parse("[tunnel]\nlocal = \"172.16.35.4\"\nttl = 255\n").unwrap();
    assert_eq!(c.tunnel.ttl.to_string(), "255");
    assert_eq!(
        c.tunnel_settings(1480).ttl,
        Ttl::Fixed(NonZeroU8::new(255).unwrap())
    );
}

/// A config in which every key differs from SEED's.
const EVERY_KEY_CHANGED: &str = r#"
[tunnel]
name = "tunl7"
local = "172.16.35.9"
mtu = 1400
address = "10.20.43.0/32"
ttl = 64
tos_inherit = true
pmtudisc = true
blocks = ["10.20.43.0/26"]
persist = false

[routing]
table = 100

[[route]]
prefix = "10.20.106.0/26"
via = "172.16.37.6"

[security]
allow = ["172.17.0.0/16"]
allow_nested = true
user = "tunl"

[control]
socket = "/run/tunl/other.sock"

[metrics]
listen = "127.0.0.1:9100"

[dataplane]
workers = 2
"#;

#[test]
fn a_reload_keeps_exactly_the_start_only_keys() {
    let old = parse(SEED).unwrap();
    let new = parse(EVERY_KEY_CHANGED).unwrap();
    let (running, pending) = old.reloaded(new.clone()).unwrap();
    let names: Vec<&str> = START_ONLY_KEYS.iter().map(|k| k.name).collect();
    assert_eq!(pending, names, "every start-only key changed");
    for key in START_ONLY_KEYS {
        assert!(!(key.changed)(&old, &running), "{} was applied", key.name);
    }
    // Everything else is the new file's.
    let (t, n) = (&running.tunnel, &new.tunnel);
    assert_eq!(t.ttl, n.ttl);
    assert_eq!(t.tos_inherit, n.tos_inherit);
    assert_eq!(t.pmtudisc, n.pmtudisc);
    assert_eq!(t.blocks, n.blocks);
    assert_eq!(running.routes, new.routes);
    assert_eq!(running.security.allow, new.security.allow);
    assert_eq!(running.security.allow_nested, new.security.allow_nested);
    let (unchanged, none) = old.reloaded(parse(SEED).unwrap()).unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(unchanged.tunnel.name, old.tunnel.name);
}

#[test]
fn operating_md_names_every_start_only_key() {
    let doc = include_str!("../../../docs/operating.md");
    for key in START_ONLY_KEYS {
        assert!(
            doc.contains(&format!("`{}`", key.name)),
            "docs/operating.md does not name {}",
            key.name
        );
    }
}

#[test]
fn a_via_inside_any_route_of_a_large_set_is_found_and_the_first_route_named() {
    let c = parse(SEED).unwrap();
    // 5,000 /26 blocks under 10.64.0.0/10, each via an underlay address.
    let mut routes: Vec<RouteEntry> = (0..5_000u32)
        .map(|i| RouteEntry {
            prefix: Ipv4Network::new(Ipv4Addr::from(0x0a40_0000 + i * 64), 26).unwrap(),
            via: Ipv4Addr::new(172, 16, 36, 5),
        })
        .collect();
    assert!(c.with_routes(routes.clone()).is_ok());
    // A next hop inside the 4,000th block, and a wider /16 later that holds
    // it too: the first route in order that holds it is named.
    routes[10].via = Ipv4Addr::from(0x0a40_0000 + 4_000 * 64 + 9);
    routes.push(RouteEntry {
        prefix: "10.67.0.0/16".parse().unwrap(),
        via: Ipv4Addr::new(172, 16, 36, 6),
    });
    let err = c.with_routes(routes).unwrap_err();
    let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [format!(
            "route[10].via: 10.67.232.9 is inside the pod block {}; `via` must be a node's \
             underlay address",
            Ipv4Network::new(Ipv4Addr::from(0x0a40_0000 + 4_000 * 64), 26).unwrap()
        )]
    );
}
