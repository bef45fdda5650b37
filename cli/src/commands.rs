//! `tunl route`, `tunl status`, `tunl stats`: clients of the control socket
//! (what they print is in [`crate::status`]).
//!
//! Exit codes as [`crate::exit`]: 0 done, 1 a runtime error (no daemon, the
//! daemon refused the request), 2 a usage error (a routes file that does
//! not parse).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ipnetwork::Ipv4Network;

use tunl::config::DEFAULT_CONTROL_SOCKET;
use tunl::control::{Client, ClientError, Request, Route, RouteChange, RouteList, Stats};

use crate::exit::{Exit, report};
use crate::status::{StatsObject, dump_status, format_stats, format_status};

/// `--socket PATH`.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// The daemon's control socket (`[control] socket` in its config).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET, global = true)]
    pub socket: PathBuf,
}

/// `tunl route` actions.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Add a route, or move a block to another node: `route add PREFIX via NODE`.
    Add {
        /// The remote block with its length, e.g. 10.20.105.192/26.
        #[arg(value_parser = prefix_arg)]
        prefix: Ipv4Network,
        /// The word `via`.
        #[arg(value_parser = ["via"], hide_possible_values = true)]
        via_word: String,
        /// The node owning it (its underlay address).
        node: Ipv4Addr,
    },
    /// Remove a route (removing an absent one succeeds).
    Del {
        /// The block, with its length.
        #[arg(value_parser = prefix_arg)]
        prefix: Ipv4Network,
    },
    /// List the routes.
    List,
    /// Replace the whole route set in one step; unchanged routes keep
    /// carrying packets.
    ///
    /// The file holds either JSON (`[{"prefix": "...", "via": "..."}]`, or
    /// `{"routes": [...]}`) or lines `PREFIX via NODE` (`#` starts a
    /// comment), as `tunl route list` prints them. `-` reads stdin.
    ///
    /// An empty set removes every route, the config's too, so it is refused
    /// (exit 2) unless `--allow-empty` is given.
    Replace {
        /// The routes file.
        #[arg(long, value_name = "ROUTES")]
        file: PathBuf,
        /// Accept an empty set: remove every route.
        #[arg(long)]
        allow_empty: bool,
    },
}

/// A prefix argument: with its length (`10.20.105.192/26`), as the config
/// wants it.
fn prefix_arg(text: &str) -> Result<Ipv4Network, String> {
    tunl::config::parse_prefix(text).map_err(|e| e.to_string())
}

/// `--json`, on every command that prints a result.
#[derive(Debug, Clone, Args)]
pub struct JsonArg {
    /// Print the result as JSON instead of text (errors stay text, on stderr).
    #[arg(long, global = true)]
    pub json: bool,
}

/// How `tunl status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutput {
    /// For people.
    Text,
    /// The daemon's reply, as JSON.
    Json,
    /// Tab-separated records (`--dump`).
    Dump,
}

/// Why `tunl route replace --file` could not use its file.
#[derive(Debug, thiserror::Error)]
pub enum RoutesFileError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The path given (`-` for stdin).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither routes JSON nor `PREFIX via NODE` lines.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The path given.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// The file names no route, and `--allow-empty` was not given.
    #[error(
        "{}: no routes: replacing the route set with an empty one removes every route, \
         the config's too; pass --allow-empty to mean it",
        path.display()
    )]
    Empty {
        /// The path given.
        path: PathBuf,
    },
}

fn fail(e: &ClientError) -> ExitCode {
    report("tunl", e)
}

/// Reads and parses a routes file; `-` reads stdin.
fn read_routes(file: &Path) -> Result<Vec<Route>, RoutesFileError> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    let text = text.map_err(|source| RoutesFileError::Read {
        path: file.to_owned(),
        source,
    })?;
    parse_routes(&text).map_err(|message| RoutesFileError::Parse {
        path: file.to_owned(),
        message,
    })
}

fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &Request,
) -> Result<T, ClientError> {
    Client::connect(socket)?.call(request)
}

/// Parses a routes file (JSON or `PREFIX via NODE` lines).
pub fn parse_routes(text: &str) -> Result<Vec<Route>, String> {
    let t = text.trim_start();
    if t.starts_with('[') {
        return serde_json::from_str(t).map_err(|e| format!("bad JSON: {e}"));
    }
    if t.starts_with('{') {
        let l: RouteList = serde_json::from_str(t).map_err(|e| format!("bad JSON: {e}"))?;
        return l
            .routes
            .iter()
            .map(|r| match r.via {
                Some(via) if r.nexthops.is_empty() => Ok(Route {
                    prefix: r.prefix,
                    via,
                }),
                _ => Err(format!(
                    "{}: a route without one gateway (multipath or none) cannot be one of tunl's",
                    r.prefix
                )),
            })
            .collect();
    }
    let mut routes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(prefix), Some(&"via"), Some(via), None) =
            (words.first(), words.get(1), words.get(2), words.get(3))
        else {
            return Err(format!(
                "line {}: expected `PREFIX via NODE`: {line:?}",
                i + 1
            ));
        };
        let prefix =
            tunl::config::parse_prefix(prefix).map_err(|e| format!("line {}: {e}", i + 1))?;
        let via = via
            .parse()
            .map_err(|e| format!("line {}: node {via:?}: {e}", i + 1))?;
        routes.push(Route { prefix, via });
    }
    Ok(routes)
}

fn describe(change: &RouteChange) -> String {
    let mut s = String::new();
    for r in &change.added {
        let _ = writeln!(s, "+ {} via {}", r.prefix, r.via);
    }
    for p in &change.removed {
        let _ = writeln!(s, "- {p}");
    }
    let _ = write!(
        s,
        "{} added or changed, {} removed, {} unchanged",
        change.added.len(),
        change.removed.len(),
        change.unchanged
    );
    s
}

/// `tunl route ...`; `--json` prints the daemon's result (a route change,
/// or the route list).
pub fn route(socket: &Path, command: RouteCommand, json: bool) -> ExitCode {
    let request = match command {
        RouteCommand::Add { prefix, node, .. } => Request::RouteAdd { prefix, via: node },
        RouteCommand::Del { prefix } => Request::RouteDel { prefix },
        RouteCommand::List => {
            return show(socket, Request::RouteList {}, json, format_route_list);
        }
        RouteCommand::Replace { file, allow_empty } => {
            let routes = match read_routes(&file) {
                Ok(routes) if routes.is_empty() && !allow_empty => {
                    return report("tunl", &RoutesFileError::Empty { path: file });
                }
                Ok(routes) => routes,
                Err(e) => return report("tunl", &e),
            };
            // Streamed when the set is too long for one request line.
            let change = Client::connect(socket).and_then(|mut c| c.replace(routes, allow_empty));
            return match change {
                Ok(v) if json => printed(print_json(&v)),
                Ok(v) => printed(print(&format!("{}\n", describe(&v)))),
                Err(e) => fail(&e),
            };
        }
    };
    show(socket, request, json, |change: &RouteChange| {
        format!("{}\n", describe(change))
    })
}

/// The text `tunl route list` prints: `PREFIX via NODE` (what `route
/// replace` reads back), the origin and metric in a comment; a multipath
/// route lists its next hops, a route without a gateway says `direct`.
pub fn format_route_list(list: &RouteList) -> String {
    let mut o = String::new();
    for r in &list.routes {
        let _ = write!(o, "{}", r.prefix);
        match r.via {
            Some(via) => {
                let _ = write!(o, " via {via}");
            }
            None if r.nexthops.is_empty() => o.push_str(" direct"),
            None => {
                for h in &r.nexthops {
                    match h.via {
                        Some(via) => {
                            let _ = write!(o, " nexthop via {via} weight {}", h.weight);
                        }
                        None => {
                            let _ = write!(o, " nexthop direct weight {}", h.weight);
                        }
                    }
                }
            }
        }
        let _ = write!(o, "  # {}", r.origin);
        if r.metric != 0 {
            let _ = write!(o, ", metric {}", r.metric);
        }
        o.push('\n');
    }
    o
}

fn show<T: serde::de::DeserializeOwned + serde::Serialize>(
    socket: &Path,
    request: Request,
    json: bool,
    text: impl Fn(&T) -> String,
) -> ExitCode {
    match call::<T>(socket, &request) {
        Ok(v) if json => printed(print_json(&v)),
        Ok(v) => printed(print(&text(&v))),
        Err(e) => fail(&e),
    }
}

/// Prints `value` as pretty JSON on stdout; `false` (after saying why on
/// stderr) when it cannot be encoded or written.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> bool {
    match serde_json::to_string_pretty(value) {
        Ok(s) => print(&format!("{s}\n")),
        Err(e) => {
            eprintln!("tunl: cannot encode the output as JSON: {e}");
            false
        }
    }
}

/// Writes `text` to stdout. A reader that went away (`tunl status | head`)
/// is no error; another failure is said on stderr and gives `false`.
pub fn print(text: &str) -> bool {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(e) => {
            eprintln!("tunl: cannot write the output: {e}");
            false
        }
    }
}

/// [`Exit::Ok`] when `written`, else [`Exit::Runtime`].
pub fn printed(written: bool) -> ExitCode {
    if written {
        Exit::Ok.into()
    } else {
        Exit::Runtime.into()
    }
}

/// `tunl status [--json | --dump]`.
pub fn status(socket: &Path, output: StatusOutput) -> ExitCode {
    match output {
        StatusOutput::Text => show(socket, Request::Status {}, false, format_status),
        StatusOutput::Json => show(socket, Request::Status {}, true, format_status),
        StatusOutput::Dump => show(socket, Request::Status {}, false, dump_status),
    }
}

/// `tunl stats [--json]`: `--json` prints one object
/// ([`StatsObject`]), not the protocol's reply.
pub fn stats(socket: &Path, json: bool) -> ExitCode {
    match call::<Stats>(socket, &Request::Stats {}) {
        Ok(s) if json => printed(print_json(&StatsObject(&s))),
        Ok(s) => printed(print(&format_stats(&s))),
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_list_shows_each_routes_origin_and_reads_back_as_a_routes_file() {
        use tunl::control::{ListedNextHop, ListedRoute};
        let list = RouteList {
            routes: vec![
                ListedRoute {
                    prefix: "10.20.1.0/26".parse().unwrap(),
                    via: Some(Ipv4Addr::new(172, 16, 36, 5)),
                    nexthops: vec![],
                    origin: "bird".into(),
                    metric: 32,
                },
                ListedRoute {
                    prefix: "10.20.2.0/26".parse().unwrap(),
                    via: Some(Ipv4Addr::new(172, 16, 36, 6)),
                    nexthops: vec![],
                    origin: "tunl".into(),
                    metric: 0,
                },
                ListedRoute {
                    prefix: "10.20.3.0/26".parse().unwrap(),
                    via: None,
                    nexthops: vec![
                        ListedNextHop {
                            via: Some(Ipv4Addr::new(172, 16, 36, 7)),
                            weight: 1,
                        },
                        ListedNextHop {
                            via: Some(Ipv4Addr::new(172, 16, 36, 8)),
                            weight: 2,
                        },
                    ],
                    origin: "200".into(),
                    metric: 0,
                },
            ],
        };
        let text = format_route_list(&list);
        assert_eq!(
            text,
            "10.20.1.0/26 via 172.16.36.5  # bird, metric 32\n\
             10.20.2.0/26 via 172.16.36.6  # tunl\n\
             10.20.3.0/26 nexthop via 172.16.36.7 weight 1 nexthop via 172.16.36.8 weight 2  # 200\n"
        );
        // The single-path lines are what `route replace` reads.
        let single: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        let back = parse_routes(&single).unwrap();
        assert_eq!(
            back.iter().map(|r| (r.prefix, r.via)).collect::<Vec<_>>(),
            vec![
                (
                    "10.20.1.0/26".parse().unwrap(),
                    Ipv4Addr::new(172, 16, 36, 5)
                ),
                (
                    "10.20.2.0/26".parse().unwrap(),
                    Ipv4Addr::new(172, 16, 36, 6)
                ),
            ]
        );
    }

    #[test]
    fn routes_files() {
        let want = vec![Route {
            prefix: "10.20.105.192/26".parse().unwrap(),
            via: Ipv4Addr::new(172, 16, 36, 5),
        }];
        assert_eq!(
            parse_routes("# comment\n10.20.105.192/26 via 172.16.36.5  # b\n\n").unwrap(),
            want
        );
        assert_eq!(
            parse_routes(r#"[{"prefix":"10.20.105.192/26","via":"172.16.36.5"}]"#).unwrap(),
            want
        );
        assert_eq!(
            parse_routes(r#"{"routes":[{"prefix":"10.20.105.192/26","via":"172.16.36.5"}]}"#)
                .unwrap(),
            want
        );
        assert!(parse_routes("").unwrap().is_empty());
        assert!(
            parse_routes("10.20.105.192/26 172.16.36.5")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_routes("10.20.105.192/33 via 172.16.36.5").is_err());
        assert_eq!(
            parse_routes("10.20.105.192/26 via 172.16.36.5\n10.20.106.0 via 172.16.36.5")
                .unwrap_err(),
            "line 2: \"10.20.106.0\" has no prefix length: write 10.20.106.0/32 for one \
             address, or the block's length (e.g. 10.20.106.0/26)"
        );
        assert!(
            parse_routes(r#"[{"prefix":"10.20.106.0","via":"172.16.36.5"}]"#)
                .unwrap_err()
                .contains("has no prefix length")
        );
    }

    #[test]
    fn route_add_wants_the_prefix_length() {
        use clap::CommandFactory;
        let e = crate::args::Cli::command()
            .try_get_matches_from([
                "tunl",
                "route",
                "add",
                "10.20.105.192",
                "via",
                "172.16.36.5",
            ])
            .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("has no prefix length"), "{e}");
        assert!(
            crate::args::Cli::command()
                .try_get_matches_from([
                    "tunl",
                    "route",
                    "add",
                    "10.20.105.192/26",
                    "via",
                    "172.16.36.5"
                ])
                .is_ok()
        );
    }
}
