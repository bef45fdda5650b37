//! Fuzzes the config reader: text to a validated `Config`.
//!
//! Never panics. An error is a syntax error or at least one problem, each
//! naming a key. An accepted config holds under the rules the daemon applies
//! again later (its routes as a control-socket route set, a reload of the
//! same file with nothing left waiting for a restart), and written back as
//! TOML it reads as the same config.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};
use tunl::config::{
    Config, ConfigError, ControlSection, DataplaneSection, MetricsSection, RouteEntry,
    RoutingSection, SecuritySection, TunnelSection, XdpModeSetting,
};

fn strings<T: ToString>(items: &[T]) -> Value {
    Value::Array(items.iter().map(|i| Value::String(i.to_string())).collect())
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(
        n.try_into()
            .unwrap_or_else(|_| panic!("a config number fits i64")),
    )
}

/// The config as a TOML file. Every field is destructured without `..`: a
/// new key does not compile here until it is written too.
fn to_toml(c: &Config) -> String {
    let Config {
        path: _,
        tunnel,
        routes,
        security,
        dataplane,
        routing,
        control,
        metrics,
    } = c;
    let TunnelSection {
        name,
        local,
        mtu,
        address,
        ttl,
        tos_inherit,
        pmtudisc,
        blocks,
        persist,
    } = tunnel;
    let mut t = Table::new();
    t.insert("name".into(), Value::String(name.clone()));
    t.insert("local".into(), Value::String(local.to_string()));
    if let Some(mtu) = mtu {
        t.insert("mtu".into(), int(*mtu));
    }
    if let Some(a) = address {
        t.insert("address".into(), Value::String(a.to_string()));
    }
    t.insert(
        "ttl".into(),
        match ttl {
            tunl_encap::Ttl::Fixed(n) => int(n.get()),
            _ => Value::String(ttl.to_string()),
        },
    );
    t.insert("tos_inherit".into(), Value::Boolean(*tos_inherit));
    t.insert("pmtudisc".into(), Value::Boolean(*pmtudisc));
    t.insert("blocks".into(), strings(blocks));
    t.insert("persist".into(), Value::Boolean(*persist));

    let route: Vec<Value> = routes
        .iter()
        .map(|RouteEntry { prefix, via }| {
            let mut r = Table::new();
            r.insert("prefix".into(), Value::String(prefix.to_string()));
            r.insert("via".into(), Value::String(via.to_string()));
            Value::Table(r)
        })
        .collect();

    let SecuritySection {
        allow,
        allow_nested,
        strict_source,
        user,
    } = security;
    let mut s = Table::new();
    s.insert("allow".into(), strings(allow));
    s.insert("allow_nested".into(), Value::Boolean(*allow_nested));
    s.insert("strict_source".into(), Value::Boolean(*strict_source));
    if let Some(u) = user {
        s.insert("user".into(), Value::String(u.clone()));
    }

    let DataplaneSection {
        workers,
        offload,
        tx_queue_len,
        socket_buffer,
        icmp_rate,
        underlay,
        xdp_mode,
        packet_tx,
        busy_poll_us,
        poll_interval_us,
        poll_quiet_us,
    } = dataplane;
    let mut d = Table::new();
    d.insert("workers".into(), int(*workers));
    d.insert("offload".into(), Value::Boolean(*offload));
    d.insert("tx_queue_len".into(), int(*tx_queue_len));
    d.insert("socket_buffer".into(), int(*socket_buffer));
    d.insert("icmp_rate".into(), int(*icmp_rate));
    if let Some(u) = underlay {
        d.insert("underlay".into(), Value::String(u.to_string()));
    }
    // Spelled out: a new mode does not compile here until it is written.
    let xdp_mode = match xdp_mode {
        XdpModeSetting::Auto => "auto",
        XdpModeSetting::Generic => "generic",
        XdpModeSetting::Native => "native",
    };
    d.insert("xdp_mode".into(), Value::String(xdp_mode.into()));
    if let Some(p) = packet_tx {
        d.insert("packet_tx".into(), Value::Boolean(*p));
    }
    d.insert("busy_poll_us".into(), int(*busy_poll_us));
    d.insert("poll_interval_us".into(), int(*poll_interval_us));
    d.insert("poll_quiet_us".into(), int(*poll_quiet_us));

    let RoutingSection {
        table,
        listen_buffer,
    } = routing;
    let mut r = Table::new();
    r.insert("table".into(), int(*table));
    r.insert("listen_buffer".into(), int(*listen_buffer));

    let ControlSection { socket } = control;
    let mut ctl = Table::new();
    let socket = socket
        .to_str()
        .expect("a socket path read from TOML is UTF-8");
    ctl.insert("socket".into(), Value::String(socket.to_owned()));

    let MetricsSection { listen } = metrics;
    let mut m = Table::new();
    if let Some(l) = listen {
        m.insert("listen".into(), Value::String(l.to_string()));
    }

    let mut file = Table::new();
    file.insert("tunnel".into(), Value::Table(t));
    file.insert("route".into(), Value::Array(route));
    file.insert("security".into(), Value::Table(s));
    file.insert("dataplane".into(), Value::Table(d));
    file.insert("routing".into(), Value::Table(r));
    file.insert("control".into(), Value::Table(ctl));
    file.insert("metrics".into(), Value::Table(m));
    toml::to_string(&file).expect("a TOML table serialises")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let config = match Config::parse(text, path) {
        Ok(c) => c,
        Err(e) => {
            match &e {
                ConfigError::Syntax { line, column, .. } => assert!(*line >= 1 && *column >= 1),
                ConfigError::Invalid { problems, .. } => {
                    assert!(!problems.is_empty(), "an invalid config without a problem");
                    assert!(
                        problems.iter().all(|p| !p.key.is_empty()),
                        "a problem names no key"
                    );
                }
                ConfigError::Read { .. } => panic!("parse does not read files"),
            }
            assert_eq!(e.path(), path);
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(config.path, path);
    if let Err(e) = config.with_routes(config.routes.clone()) {
        panic!("its own routes refused as a route set: {e}\n{text}");
    }
    match config.reloaded(config.clone()) {
        Ok((_, pending)) => assert!(pending.is_empty(), "reload of itself waits for {pending:?}"),
        Err(e) => panic!("a reload of the same config refused: {e}\n{text}"),
    }
    let written = to_toml(&config);
    let again = match Config::parse(&written, path) {
        Ok(c) => c,
        Err(e) => panic!("written back, refused: {e}\n--- read\n{text}\n--- written\n{written}"),
    };
    assert_eq!(
        format!("{again:?}"),
        format!("{config:?}"),
        "written back, read differently:\n{written}"
    );
});
