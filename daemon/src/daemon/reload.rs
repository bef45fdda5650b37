//! Reload (SIGHUP): re-read the config file and apply what can change at
//! runtime; the [`START_ONLY_KEYS`](crate::config::START_ONLY_KEYS) wait for
//! a restart.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::routes::{KernelRoutes, RouteManager, RouteOrigin, wanted_routes};
use super::startup::policy_for;
use crate::config::{Config, ConfigError};

/// Re-reads the config file and applies it; on any error the daemon keeps
/// running on `config` as it was.
pub(super) async fn reload<K: KernelRoutes>(config: &mut Config, routes: &mut RouteManager<K>) {
    let loaded = Config::load(&config.path);
    apply(config, loaded, routes).await;
}

/// Applies a config read from the file: its routes first (all or nothing),
/// then its policy.
async fn apply<K: KernelRoutes>(
    config: &mut Config,
    loaded: Result<Config, ConfigError>,
    routes: &mut RouteManager<K>,
) {
    let (new, pending) = match loaded.and_then(|new| config.reloaded(new)) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: {e}; still running on the previous config");
            return;
        }
    };
    if !pending.is_empty() {
        warn!(
            keys = %pending.join(","),
            "SIGHUP: these keys take effect at the next restart; the rest of the file is applied"
        );
    }
    if let Err(e) = routes
        .apply(&wanted_routes(&new), RouteOrigin::Reload)
        .await
    {
        error!("SIGHUP: {e}; still running on the previous config");
        return;
    }
    let mtu = routes.shared().policy.load().settings.mtu;
    // The accepted gateways and the multipath groups come from the routes.
    let mut policy = policy_for(&new, mtu);
    routes.mirror().fill_policy(&mut policy);
    routes.shared().policy.store(Arc::new(policy));
    info!(routes = new.routes.len(), "SIGHUP: config reloaded");
    *config = new;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;

    use tunl_encap::Ttl;

    use super::super::routes::fake::KernelCall;
    use super::super::routes::tests::{manager, net, node, routes};
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    const OLD: &str = "[tunnel]\nlocal = \"172.16.35.4\"\nmtu = 1400\n\
                       [[route]]\nprefix = \"10.20.1.0/26\"\nvia = \"172.16.36.5\"\n";

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A manager running on OLD, as at the end of startup.
    fn running() -> (Config, RouteManager<super::super::routes::fake::FakeKernel>) {
        let config = parse(OLD).unwrap();
        let (mut m, _) = manager();
        m.shared().policy.store(Arc::new(policy_for(&config, 1400)));
        run(m.apply(&wanted_routes(&config), RouteOrigin::Config)).unwrap();
        (config, m)
    }

    #[test]
    fn a_reload_applies_routes_and_policy_and_keeps_the_start_only_keys() {
        let (mut config, mut m) = running();
        let edited = OLD
            .replace("10.20.1.0/26", "10.20.2.0/26")
            .replace("mtu = 1400", "mtu = 1300\nttl = 64");
        run(apply(&mut config, parse(&edited), &mut m));
        assert_eq!(*m.routes(), routes(&[("10.20.2.0/26", 5)]));
        let policy = m.shared().policy.load();
        assert_eq!(policy.settings.ttl, Ttl::Fixed(64.try_into().unwrap()));
        assert_eq!(policy.settings.mtu, 1400, "the device's MTU stays");
        assert_eq!(config.tunnel.mtu, Some(1400));
        assert_eq!(config.routes[0].prefix, net("10.20.2.0/26"));
    }

    #[test]
    fn a_bad_file_or_a_kernel_refusal_keeps_the_previous_config() {
        let (mut config, mut m) = running();
        run(apply(&mut config, parse("[tunnel]\n"), &mut m));
        assert_eq!(*m.routes(), routes(&[("10.20.1.0/26", 5)]));
        let edited = OLD
            .replace("10.20.1.0/26", "10.20.2.0/26")
            .replace("mtu = 1400", "mtu = 1400\nttl = 64");
        m.kernel_mut()
            .refuse
            .push(KernelCall::Add(net("10.20.2.0/26"), node(5)));
        run(apply(&mut config, parse(&edited), &mut m));
        assert_eq!(*m.routes(), routes(&[("10.20.1.0/26", 5)]));
        assert_eq!(config.routes[0].prefix, net("10.20.1.0/26"));
        assert_eq!(m.shared().policy.load().settings.ttl, Ttl::Inherit);
        // A route via the running local address is refused, even when the
        // file also moves tunnel.local.
        let via_self = OLD
            .replace("172.16.35.4", "172.16.35.9")
            .replace("via = \"172.16.36.5\"", "via = \"172.16.35.4\"");
        run(apply(&mut config, parse(&via_self), &mut m));
        assert_eq!(config.tunnel.local, Ipv4Addr::new(172, 16, 35, 4));
        assert_eq!(*m.routes(), routes(&[("10.20.1.0/26", 5)]));
    }
}
