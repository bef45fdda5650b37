//! What the command line says about itself: `tunl version`, and the shell
//! completions and man pages generated from the clap definitions
//! (`clap_complete`, `clap_mangen`), for packaging.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::args::{BUILD, VERSION, command};
use crate::exit::{Exit, report};

/// What `tunl version --json` prints.
#[derive(Debug, Serialize)]
pub struct Version {
    /// The release, e.g. `0.1.0`.
    pub version: &'static str,
    /// The short git commit, or `unknown` (built outside a git checkout).
    pub commit: &'static str,
}

/// `tunl version [--json]`.
pub fn version(json: bool) -> ExitCode {
    let written = if json {
        crate::commands::print_json(&Version {
            version: BUILD.version,
            commit: BUILD.commit,
        })
    } else {
        crate::commands::print(&format!("tunl {VERSION}\n"))
    };
    crate::commands::printed(written)
}

/// `tunl completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(), "tunl", &mut out);
    write_stdout(&out)
}

/// `tunl man [--dir DIR]`: tunl(1) on stdout, or every page into `DIR`.
pub fn man(dir: Option<&Path>) -> ExitCode {
    match dir {
        Some(dir) => match std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(command(), dir))
        {
            Ok(()) => Exit::Ok.into(),
            Err(e) => report("tunl man", &e),
        },
        None => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(command()).render(&mut out) {
                Ok(()) => write_stdout(&out),
                Err(e) => report("tunl man", &e),
            }
        }
    }
}

fn write_stdout(bytes: &[u8]) -> ExitCode {
    crate::commands::printed(crate::commands::print(&String::from_utf8_lossy(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_commit() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.ends_with(&format!("(commit {})", BUILD.commit)));
        assert!(!BUILD.commit.is_empty());
    }

    #[test]
    fn completions_know_every_subcommand() {
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut command(), "tunl", &mut out);
        let script = String::from_utf8(out).unwrap();
        for sub in [
            "run",
            "route",
            "status",
            "stats",
            "check",
            "version",
            "completions",
        ] {
            assert!(script.contains(sub), "{sub} not in the bash script");
        }
        assert!(script.contains("--allow-empty"));
    }
}
