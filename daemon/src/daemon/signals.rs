//! Signals: SIGINT and SIGTERM stop the daemon, SIGHUP reloads its config.

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::error::DaemonError;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// Stop (the signal's name, for the log).
    Stop(&'static str),
    /// Re-read the config (SIGHUP).
    Reload,
}

/// The signals the daemon handles, caught from the very start so that one
/// arriving during setup (a SIGHUP or a SIGTERM) is acted on once setup is
/// done instead of killing the process with its device and routes in place.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub(super) fn catch() -> Result<Signals, DaemonError> {
        let catch = |kind, name| {
            signal(kind).map_err(|source| DaemonError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Signals {
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            int: catch(SignalKind::interrupt(), "SIGINT")?,
            hup: catch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next signal. Cancel-safe: a signal that arrives while another
    /// branch of the caller's `select!` wins is kept for the next call.
    pub(super) async fn next(&mut self) -> Asked {
        tokio::select! {
            _ = self.term.recv() => Asked::Stop("SIGTERM"),
            _ = self.int.recv() => Asked::Stop("SIGINT"),
            _ = self.hup.recv() => Asked::Reload,
        }
    }
}
