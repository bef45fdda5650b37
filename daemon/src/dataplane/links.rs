//! What the dataplane knows of the host's links: whether `tunnel.local` is
//! still an address of this node (the workers read it once per batch: one
//! relaxed load), and, for `tunl status` and the metrics, the underlay
//! device's state. The control plane's link watcher writes both.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The state of the underlay device (the one holding `tunnel.local`, or
/// the one that last did).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Administratively up, with carrier.
    Up,
    /// Down, or without carrier.
    Down,
    /// No longer exists.
    Gone,
}

impl DeviceState {
    /// `up`, `down` or `gone`, for status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Up => "up",
            DeviceState::Down => "down",
            DeviceState::Gone => "gone",
        }
    }
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The underlay as the link watcher last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayReport {
    /// Whether `tunnel.local` is an address of this node.
    pub local_present: bool,
    /// The underlay device's name: the one holding `tunnel.local`, else the
    /// one that last did; `None` when no device ever held it.
    pub device: Option<String>,
    /// Its state (`Gone` when `device` is `None`).
    pub state: DeviceState,
}

impl Default for UnderlayReport {
    fn default() -> Self {
        UnderlayReport {
            local_present: true,
            device: None,
            state: DeviceState::Gone,
        }
    }
}

/// The host's links as the dataplane sees them.
#[derive(Debug, Default)]
pub struct LinkStates {
    /// True once the watcher saw `tunnel.local` go (false until it looks).
    local_missing: AtomicBool,
    report: Mutex<UnderlayReport>,
}

impl LinkStates {
    /// Whether outer packets may be sent: `tunnel.local` is an address of
    /// this node (true until the watcher says otherwise).
    #[inline]
    pub fn local_present(&self) -> bool {
        !self.local_missing.load(Ordering::Relaxed)
    }

    /// What the watcher last saw.
    pub fn report(&self) -> UnderlayReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes what the watcher sees now.
    pub fn set(&self, report: UnderlayReport) {
        self.local_missing
            .store(!report.local_present, Ordering::Relaxed);
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_present_follows_the_report() {
        let links = LinkStates::default();
        assert!(links.local_present(), "present until the watcher looks");
        links.set(UnderlayReport {
            local_present: false,
            device: Some("eth0".into()),
            state: DeviceState::Up,
        });
        assert!(!links.local_present());
        assert_eq!(links.report().device.as_deref(), Some("eth0"));
        links.set(UnderlayReport {
            local_present: true,
            device: Some("eth0".into()),
            state: DeviceState::Down,
        });
        assert!(links.local_present());
        assert_eq!(links.report().state.to_string(), "down");
    }
}
