//! Logging: the filter (`--log`, `RUST_LOG`), checked before it is used,
//! and the format (`--log-format text|json`), every event on one line.
//!
//! tracing's `EnvFilter` takes any bare word as a target name, so a typo
//! (`--log verbose`, `--log debugg`) would enable nothing but that
//! nonexistent target and mute every other event, errors included. So a
//! filter is a comma-separated list of directives, each one of:
//! - a level: `off`, `error`, `warn`, `info`, `debug`, `trace`;
//! - one of tunl's own targets, alone (`tunl`, `tunl::daemon`, `tunl_io`):
//!   everything it logs;
//! - `TARGET=LEVEL` for any target (`tunl=debug`, `mio=trace`), or another
//!   `EnvFilter` directive with a span (`tunl[run]=debug`), as its parser
//!   accepts it.
//!
//! Anything else is refused, and the command exits with code 2.

use std::io::{self, Write};

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;
use tracing_subscriber::fmt::MakeWriter;

/// The levels a bare word may name.
pub const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// The crates of tunl, whose names (and module paths under them) are
/// accepted as bare targets.
pub const TARGETS: &[&str] = &[
    "tunl",
    "tunl_cli",
    "tunl_encap",
    "tunl_routing",
    "tunl_io",
    "tunl_lab",
];

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`
    /// and the event's fields), for log pipelines.
    Json,
}

/// Why a log filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin} {filter:?}: {problem}")]
pub struct FilterError {
    /// Where it came from: `--log` or `RUST_LOG`.
    pub origin: &'static str,
    /// The filter as given.
    pub filter: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Checks a filter by the rule of this module; `origin` names it in the
/// error.
///
/// # Errors
/// [`FilterError`] naming the first directive that is refused.
pub fn parse_filter(origin: &'static str, filter: &str) -> Result<EnvFilter, FilterError> {
    let error = |problem: String| FilterError {
        origin,
        filter: filter.to_owned(),
        problem,
    };
    if filter.trim().is_empty() {
        return Err(error(format!(
            "empty; use a level ({}) or TARGET=LEVEL",
            LEVELS.join(", ")
        )));
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        check_directive(directive).map_err(&error)?;
    }
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| error(e.to_string()))
}

fn check_directive(d: &str) -> Result<(), String> {
    if d.contains(['=', '[']) {
        // EnvFilter's own parser also checks the level after `=`.
        return d
            .parse::<Directive>()
            .map(|_| ())
            .map_err(|e| format!("{d:?}: {e}"));
    }
    let is_level = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d));
    let is_ours = TARGETS
        .iter()
        .any(|t| d == *t || d.strip_prefix(t).is_some_and(|rest| rest.starts_with("::")));
    if is_level || is_ours {
        return Ok(());
    }
    Err(format!(
        "{d:?} is neither a level ({}) nor one of tunl's targets ({}); \
         for another target write TARGET=LEVEL (e.g. mio=debug)",
        LEVELS.join(", "),
        TARGETS.join(", ")
    ))
}

/// The filter in force: `RUST_LOG` when set (and not empty), else `--log`.
///
/// # Errors
/// [`FilterError`] for the one that is used.
pub fn filter(log_arg: &str) -> Result<EnvFilter, FilterError> {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => parse_filter("RUST_LOG", &env),
        _ => parse_filter("--log", log_arg),
    }
}

/// Installs the subscriber: `filter`, in `format`, to stderr.
pub fn init(filter: EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(OneLine);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// Stderr, with every event on one line: a newline inside an event's text
/// becomes ` | ` (JSON has none: the encoder escapes them).
#[derive(Debug, Clone, Copy)]
pub struct OneLine;

impl<'a> MakeWriter<'a> for OneLine {
    type Writer = OneLineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter
    }
}

/// The writer [`OneLine`] makes: each `write` is one formatted event.
#[derive(Debug)]
pub struct OneLineWriter;

impl Write for OneLineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write_all(&one_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// `event` with every newline but the last replaced by ` | `.
pub fn one_line(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    if !body.contains(&b'\n') {
        return event.into();
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    for (i, line) in body
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .enumerate()
    {
        if i > 0 {
            out.extend_from_slice(b" | ");
        }
        out.extend_from_slice(line.trim_ascii_end());
    }
    out.extend_from_slice(end);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_our_targets_and_directives_are_accepted() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "tunl",
            "tunl::daemon",
            "tunl_io",
            "warn,tunl=debug",
            "tunl::daemon::routes=trace",
            "mio=debug",
            "info,",
            "tunl[run]=debug",
        ] {
            assert!(parse_filter("--log", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_typo_is_refused_not_taken_for_a_target() {
        for (bad, want) in [
            ("verbose", "\"verbose\" is neither a level"),
            ("debugg", "\"debugg\" is neither a level"),
            ("info,verbose", "\"verbose\" is neither a level"),
            ("tunlx", "\"tunlx\" is neither a level"),
            ("tunl=debugg", "\"tunl=debugg\": "),
            ("", "empty"),
            ("  ", "empty"),
        ] {
            let e = parse_filter("--log", bad).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with(&format!("--log {bad:?}: ")), "{text}");
            assert!(text.contains(want), "{bad}: {text}");
        }
        let e = parse_filter("RUST_LOG", "verbose").unwrap_err();
        assert!(e.to_string().starts_with("RUST_LOG \"verbose\": "), "{e}");
        assert!(e.to_string().contains("TARGET=LEVEL"), "{e}");
    }

    #[test]
    fn an_event_is_one_line() {
        assert_eq!(&*one_line(b"plain\n"), b"plain\n");
        assert_eq!(
            &*one_line(b"TOML parse error at line 3\n  |\n3 | mtu = = 3\n  |       ^\n"),
            b"TOML parse error at line 3 |   | | 3 | mtu = = 3 |   |       ^\n"
        );
        assert_eq!(&*one_line(b"a\n\nb"), b"a | b");
    }
}
