//! Errors opening devices and sockets.

use std::io;

/// An error opening or configuring a device or socket, with the message a
/// user needs to fix it.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum IoError {
    /// The process lacks the privilege to open or configure `what`.
    #[error("{what}: permission denied (needs root or CAP_NET_ADMIN/CAP_NET_RAW)")]
    PermissionDenied {
        /// What was being opened or configured.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The TUN device exists and is held by another process.
    #[error(
        "TUN device {name} is busy: it is held by another process (stop it, or choose another device name)"
    )]
    DeviceBusy {
        /// The device name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `/dev/net/tun` is missing or the tun driver is not loaded.
    #[error(
        "cannot open /dev/net/tun: the tun driver is missing (modprobe tun, or mount /dev/net/tun into the container)"
    )]
    NoTunDriver {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A device exists under this name with incompatible flags (for example
    /// single-queue, or a different kind of device).
    #[error(
        "cannot attach to existing device {name}: it exists with other settings (delete it first)"
    )]
    IncompatibleDevice {
        /// The device name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The configuration cannot be applied as given.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Any other OS error while doing `what`.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl IoError {
    /// Classifies an OS error from doing `what` (on the device `name`, if any).
    pub(crate) fn from_os(what: impl Into<String>, name: Option<&str>, source: io::Error) -> Self {
        let what = what.into();
        match (source.raw_os_error(), name) {
            (Some(libc::EPERM | libc::EACCES), _) => IoError::PermissionDenied { what, source },
            (Some(libc::EBUSY), Some(name)) => IoError::DeviceBusy {
                name: name.to_owned(),
                source,
            },
            (Some(libc::EINVAL), Some(name)) => IoError::IncompatibleDevice {
                name: name.to_owned(),
                source,
            },
            (Some(libc::ENOENT | libc::ENODEV | libc::ENXIO), Some(_)) => {
                IoError::NoTunDriver { source }
            }
            _ => IoError::Io { what, source },
        }
    }

    /// The underlying OS error, if any.
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            IoError::PermissionDenied { source, .. }
            | IoError::DeviceBusy { source, .. }
            | IoError::NoTunDriver { source }
            | IoError::IncompatibleDevice { source, .. }
            | IoError::Io { source, .. } => Some(source),
            IoError::InvalidConfig(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_fix() {
        let e = IoError::from_os(
            "open raw IPIP socket",
            None,
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert!(e.to_string().contains("CAP_NET_ADMIN/CAP_NET_RAW"), "{e}");
        let e = IoError::from_os(
            "create TUN",
            Some("tunl0"),
            io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert!(e.to_string().contains("held by another process"), "{e}");
        assert!(e.to_string().contains("tunl0"), "{e}");
        let e = IoError::from_os("x", None, io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(matches!(e, IoError::Io { .. }));
        assert_eq!(
            e.os_error().and_then(io::Error::raw_os_error),
            Some(libc::ENOMEM)
        );
    }
}
