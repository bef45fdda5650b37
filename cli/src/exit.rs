//! The one table of exit codes: every command exits through it, and every
//! error type says here which code it gives.
//!
//! | code | [`Exit`] | when |
//! | --- | --- | --- |
//! | 0 | [`Exit::Ok`] | done (also `--help` and `--version`) |
//! | 1 | [`Exit::Runtime`] | the daemon could not start or stopped with an error (device, sockets, netlink, routes, privileges, the dataplane), no daemon answers, the daemon refused a request, a lab or bench run failed |
//! | 2 | [`Exit::Config`] | the config file cannot be read or is invalid, also when a key does not fit this host (a `tunnel.mtu` the underlay cannot carry, a `tunnel.local` on no interface with no `tunnel.mtu`, a `security.user` that does not exist); a routes file that does not parse; bad arguments |

use std::process::ExitCode;

use tunl::config::ConfigError;
use tunl::control::ClientError;
use tunl::daemon::DaemonError;

use crate::commands::RoutesFileError;

/// How `tunl` exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: a runtime error.
    Runtime,
    /// 2: a configuration or usage error.
    Config,
}

impl Exit {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Runtime => 1,
            Exit::Config => 2,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// The exit code an error gives: the rows of the table.
pub trait ExitStatus {
    /// Which row of the table this error is.
    fn exits_with(&self) -> Exit;

    /// The config problems this error holds, each printed on its own line
    /// (like a compiler's errors); `None` prints the error as one line.
    fn config_problems(&self) -> Option<&ConfigError> {
        None
    }
}

impl ExitStatus for DaemonError {
    fn exits_with(&self) -> Exit {
        match self {
            DaemonError::Config(_) => Exit::Config,
            _ => Exit::Runtime,
        }
    }

    fn config_problems(&self) -> Option<&ConfigError> {
        match self {
            DaemonError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl ExitStatus for ConfigError {
    fn exits_with(&self) -> Exit {
        Exit::Config
    }

    fn config_problems(&self) -> Option<&ConfigError> {
        Some(self)
    }
}

impl ExitStatus for ClientError {
    fn exits_with(&self) -> Exit {
        Exit::Runtime
    }
}

impl ExitStatus for RoutesFileError {
    fn exits_with(&self) -> Exit {
        Exit::Config
    }
}

impl ExitStatus for tunl_lab::lab::LabError {
    fn exits_with(&self) -> Exit {
        Exit::Runtime
    }
}

impl ExitStatus for tunl_lab::bench::BenchError {
    fn exits_with(&self) -> Exit {
        Exit::Runtime
    }
}

impl ExitStatus for std::io::Error {
    fn exits_with(&self) -> Exit {
        Exit::Runtime
    }
}

impl ExitStatus for clap::Error {
    /// A usage error is a 2; `--help` and `--version` print to stdout and
    /// are a 0.
    fn exits_with(&self) -> Exit {
        if self.use_stderr() {
            Exit::Config
        } else {
            Exit::Ok
        }
    }
}

/// Prints `error` as `WHO: error` on stderr and gives its exit code; an
/// invalid config gets a line per problem, then the count.
pub fn report<E: std::fmt::Display + ExitStatus>(who: &str, error: &E) -> ExitCode {
    for line in report_lines(error) {
        eprintln!("{who}: {line}");
    }
    error.exits_with().into()
}

/// The lines [`report`] prints (after `WHO: `).
pub fn report_lines<E: std::fmt::Display + ExitStatus>(error: &E) -> Vec<String> {
    let problems = error
        .config_problems()
        .map_or(&[][..], ConfigError::problems);
    if let (Some(config), [_, _, ..]) = (error.config_problems(), problems) {
        let path = config.path().display();
        let mut lines: Vec<String> = problems
            .iter()
            .map(|p| format!("config {path}: {p}"))
            .collect();
        lines.push(format!("config {path}: {} errors", problems.len()));
        lines
    } else {
        vec![error.to_string()]
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn config_error() -> ConfigError {
        tunl::config::Config::parse("[tunnel]\n", Path::new("t.toml")).unwrap_err()
    }

    #[test]
    fn every_error_type_has_its_row() {
        assert_eq!(config_error().exits_with(), Exit::Config);
        assert_eq!(DaemonError::from(config_error()).exits_with(), Exit::Config);
        let device = DaemonError::DeviceExists {
            name: "tunl0".to_owned(),
        };
        assert_eq!(device.exits_with(), Exit::Runtime);
        let stopped = DaemonError::DataplaneStopped {
            reason: "TUN read failed".to_owned(),
        };
        assert_eq!(stopped.exits_with(), Exit::Runtime);
        assert_eq!(
            ClientError::Refused("no".to_owned()).exits_with(),
            Exit::Runtime
        );
        let file = RoutesFileError::Parse {
            path: PathBuf::from("r.txt"),
            message: "line 1".to_owned(),
        };
        assert_eq!(file.exits_with(), Exit::Config);
        assert_eq!(
            [Exit::Ok, Exit::Runtime, Exit::Config].map(Exit::code),
            [0, 1, 2]
        );
    }

    #[test]
    fn an_invalid_config_is_reported_a_line_per_problem() {
        let e = tunl::config::Config::parse(
            "[tunnel]\nlocal = \"0.0.0.0\"\nmtu = 1\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert_eq!(
            report_lines(&e),
            [
                "config t.toml: tunnel.mtu: expected a number 68..=65515, found 1",
                "config t.toml: tunnel.local: 0.0.0.0 is not a unicast host address",
                "config t.toml: 2 errors",
            ]
        );
        assert_eq!(report_lines(&DaemonError::from(e)).len(), 3);
        assert_eq!(
            report_lines(&config_error()),
            [config_error().to_string()],
            "one problem, one line"
        );
    }

    #[test]
    fn usage_errors_are_config_errors_and_help_is_ok() {
        use clap::CommandFactory;
        let usage = crate::args::Cli::command()
            .try_get_matches_from(["tunl", "frobnicate"])
            .unwrap_err();
        assert_eq!(usage.exits_with(), Exit::Config);
        let help = crate::args::Cli::command()
            .try_get_matches_from(["tunl", "--help"])
            .unwrap_err();
        assert_eq!(help.exits_with(), Exit::Ok);
    }
}
