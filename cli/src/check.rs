//! `tunl check`: read a config (a file, or stdin for `-`), check it and
//! what it needs of this host (`security.user`), and print what it would
//! set up, as text or JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use tunl::config::{Config, ConfigError, DEFAULT_CONFIG};

use crate::exit::{Exit, ExitStatus, report};

/// What `-` is called in messages: the config read from stdin.
pub const STDIN_NAME: &str = "<stdin>";

/// The config file a command reads: `FILE`, else `--config FILE`, else
/// [`DEFAULT_CONFIG`].
pub fn config_path(file: Option<PathBuf>, config: Option<PathBuf>) -> PathBuf {
    file.or(config)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Reads and validates the config at `path`; `-` reads stdin.
///
/// # Errors
/// [`ConfigError`] as [`Config::load`] and [`Config::parse`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    if path.as_os_str() != "-" {
        return Config::load(path);
    }
    let name = Path::new(STDIN_NAME);
    let text = std::io::read_to_string(std::io::stdin()).map_err(|source| ConfigError::Read {
        path: name.to_owned(),
        source,
    })?;
    Config::parse(&text, name)
}

/// A config problem in `check --json`.
#[derive(Debug, Serialize)]
pub struct JsonProblem {
    /// The key (`route[1].prefix`); `null` when the file could not be read
    /// or is not TOML.
    pub key: Option<String>,
    /// What is wrong.
    pub problem: String,
}

/// A route in `check --json`.
#[derive(Debug, Serialize)]
pub struct JsonRoute {
    /// The remote block.
    pub prefix: String,
    /// The node owning it.
    pub via: String,
}

/// What `tunl check --json` prints.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The config as named (`<stdin>` for `-`).
    pub config: String,
    /// Whether it is valid.
    pub ok: bool,
    /// Every problem, when not `ok`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<JsonProblem>,
    /// What it would set up, when `ok`.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub setup: Option<Setup>,
}

/// What a valid config would set up.
#[derive(Debug, Serialize)]
pub struct Setup {
    /// `tunnel.name`.
    pub device: String,
    /// `tunnel.local`.
    pub local: String,
    /// `tunnel.mtu`; `null`: derived from the underlay at start.
    pub mtu: Option<u16>,
    /// `tunnel.address`.
    pub address: Option<String>,
    /// `tunnel.ttl`: `inherit` or a number.
    pub ttl: String,
    /// `tunnel.blocks`.
    pub blocks: Vec<String>,
    /// The routes, in file order.
    pub routes: Vec<JsonRoute>,
    /// `control.socket`.
    pub control_socket: String,
    /// `metrics.listen`.
    pub metrics: Option<String>,
    /// `security.user`.
    pub user: Option<String>,
}

impl Setup {
    fn of(c: &Config) -> Setup {
        Setup {
            device: c.tunnel.name.clone(),
            local: c.tunnel.local.to_string(),
            mtu: c.tunnel.mtu,
            address: c.tunnel.address.map(|a| a.to_string()),
            ttl: c.tunnel.ttl.to_string(),
            blocks: c.tunnel.blocks.iter().map(ToString::to_string).collect(),
            routes: c
                .routes
                .iter()
                .map(|r| JsonRoute {
                    prefix: r.prefix.to_string(),
                    via: r.via.to_string(),
                })
                .collect(),
            control_socket: c.control.socket.display().to_string(),
            metrics: c.metrics.listen.map(|a| a.to_string()),
            user: c.security.user.clone(),
        }
    }
}

/// The config at `path` checked, and on this host: [`Config`] or the error.
pub fn checked(path: &Path) -> Result<Config, ConfigError> {
    let config = load(path)?;
    tunl::daemon::check_host(&config)?;
    Ok(config)
}

/// The config as messages name it: the path, or `<stdin>` for `-`.
fn display_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        STDIN_NAME.to_owned()
    } else {
        path.display().to_string()
    }
}

/// `check --json`'s report for a result of [`checked`].
pub fn json_report(path: &Path, result: &Result<Config, ConfigError>) -> CheckReport {
    let name = display_name(path);
    match result {
        Ok(c) => CheckReport {
            config: name,
            ok: true,
            problems: Vec::new(),
            setup: Some(Setup::of(c)),
        },
        Err(e) => CheckReport {
            config: name,
            ok: false,
            problems: match e.problems() {
                [] => vec![JsonProblem {
                    key: None,
                    problem: e.to_string(),
                }],
                problems => problems
                    .iter()
                    .map(|p| JsonProblem {
                        key: Some(p.key.clone()),
                        problem: p.problem.clone(),
                    })
                    .collect(),
            },
            setup: None,
        },
    }
}

/// The text `tunl check` prints for a valid config.
pub fn format_check(name: &str, c: &Config) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{name}: ok: device {}, local {}, {} route(s), {} local block(s), ttl {}",
        c.tunnel.name,
        c.tunnel.local,
        c.routes.len(),
        c.tunnel.blocks.len(),
        c.tunnel.ttl
    );
    for r in &c.routes {
        let _ = writeln!(
            o,
            "  {} via {} dev {} onlink",
            r.prefix, r.via, c.tunnel.name
        );
    }
    o
}

/// `tunl check [FILE] [--json]`.
pub fn check(path: &Path, json: bool) -> ExitCode {
    let result = checked(path);
    if json {
        let report = json_report(path, &result);
        if !crate::commands::print_json(&report) {
            return Exit::Runtime.into();
        }
        return match &result {
            Ok(_) => Exit::Ok.into(),
            Err(e) => e.exits_with().into(),
        };
    }
    match result {
        Ok(c) => crate::commands::printed(crate::commands::print(&format_check(
            &display_name(path),
            &c,
        ))),
        Err(e) => report("tunl", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_path_is_the_argument_the_option_or_the_default() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(config_path(p("a.toml"), None), PathBuf::from("a.toml"));
        assert_eq!(config_path(None, p("b.toml")), PathBuf::from("b.toml"));
        assert_eq!(config_path(None, None), PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(DEFAULT_CONFIG, "/etc/tunl/tunl.toml");
    }

    #[test]
    fn the_json_report_has_every_problem_or_the_setup() {
        let bad = Config::parse(
            "[tunnel]\nlocal = \"172.16.35.4\"\nmtu = \"x\"\nttl = 0\n",
            Path::new("t.toml"),
        );
        let r = serde_json::to_value(json_report(Path::new("t.toml"), &bad)).unwrap();
        assert_eq!(r["ok"], false);
        assert_eq!(r["problems"][0]["key"], "tunnel.mtu");
        assert_eq!(r["problems"][1]["key"], "tunnel.ttl");
        assert!(r.get("device").is_none());
        let good = Config::parse(
            "[tunnel]\nlocal = \"172.16.35.4\"\n[[route]]\nprefix = \"10.20.105.192/26\"\nvia = \"172.16.36.5\"\n",
            Path::new("t.toml"),
        );
        let r = serde_json::to_value(json_report(Path::new("-"), &good)).unwrap();
        assert_eq!(r["ok"], true);
        assert_eq!(r["config"], STDIN_NAME);
        assert_eq!(r["device"], "tunl0");
        assert_eq!(r["mtu"], serde_json::Value::Null);
        assert_eq!(r["routes"][0]["prefix"], "10.20.105.192/26");
        assert!(r.get("problems").is_none());
    }
}
