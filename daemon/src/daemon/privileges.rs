//! Dropping privileges once the daemon has set up.
//!
//! Capabilities are per thread on Linux, and a new thread starts with its
//! creator's. So the daemon drops in three steps:
//!
//! 1. [`drop_to`] before the dataplane threads start, once the TUN device
//!    and the IPIP/ICMP receive sockets are open (and, with the XDP
//!    underlay, the program loaded and attached and its AF_XDP sockets
//!    bound, which needs CAP_BPF): the bounding set (when
//!    the process holds CAP_SETPCAP to do so), inheritable and ambient sets
//!    are emptied, `no_new_privs` is set, the process
//!    optionally switches to `[security] user` (looked up at start with
//!    [`look_up_user`]; setresuid/setresgid, which glibc applies to every
//!    thread), and the permitted and effective sets become
//!    [`DATAPLANE_START`], `CAP_NET_ADMIN` and `CAP_NET_RAW` (each worker
//!    still opens a raw send socket).
//! 2. [`drop_thread_capabilities`] at the start of every dataplane thread:
//!    reading and writing open descriptors needs no capability, so workers
//!    run with none.
//! 3. [`keep_control_plane_only`] on the control-plane thread once the
//!    dataplane has started: it keeps only [`CONTROL_PLANE`]
//!    (`CAP_NET_ADMIN`), for netlink route changes at runtime and removing
//!    the device at exit; then the route listener's thread (which only
//!    reads the netlink sockets the control plane opens for it) drops every
//!    capability with [`drop_thread_capabilities`]. It must not do so
//!    earlier: glibc applies the user switch to every thread, and aborts
//!    the process when one of them lacks `CAP_SETUID` for it.
//!
//! This module is the daemon's only user of the `caps` crate: every
//! capability it checks, keeps or drops is named here.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::User;

/// What the control plane keeps for good: netlink route changes at runtime
/// and removing the device at exit.
pub const CONTROL_PLANE: Capability = Capability::CAP_NET_ADMIN;
/// What the control plane holds while the dataplane starts: each worker
/// still opens a raw send socket.
pub const DATAPLANE_START: &[Capability] = &[CONTROL_PLANE, Capability::CAP_NET_RAW];

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivilegeError {
    /// A capability set could not be read or changed.
    #[error("cannot drop privileges: {step}: {source}")]
    Capabilities {
        /// What was being done, e.g. `clear the ambient set`.
        step: &'static str,
        /// What the `caps` crate reported.
        #[source]
        source: caps::errors::CapsError,
    },
    /// A system call of the user switch or `no_new_privs` failed.
    #[error("cannot drop privileges: {step}: {source}")]
    System {
        /// What was being done, e.g. `setresuid 65534`.
        step: String,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
}

/// Why `security.user` names no user on this host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The user database has no such user.
    #[error("no user {0:?} on this host")]
    NoSuchUser(String),
    /// The user database could not be read.
    #[error("cannot look up user {name:?}: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
}

fn caps_err(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Capabilities { step, source }
}

fn sys_err(step: impl Into<String>) -> impl FnOnce(nix::Error) -> PrivilegeError {
    let step = step.into();
    move |source| PrivilegeError::System { step, source }
}

/// Looks `name` up in the user database, before anything is set up, so a
/// missing user stops the daemon before it touches the host.
///
/// # Errors
/// [`UserError`] when there is no such user or the database cannot be read.
pub fn look_up_user(name: &str) -> Result<User, UserError> {
    User::from_name(name)
        .map_err(|source| UserError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| UserError::NoSuchUser(name.to_owned()))
}

/// Drops the bounding, inheritable and ambient sets, sets `no_new_privs`,
/// switches to `user` when given, and leaves `keep` as the permitted and
/// effective sets of the calling thread (and of threads it starts later).
///
/// # Errors
/// [`PrivilegeError`] naming the step that failed; the process may then
/// hold fewer privileges than before, never more.
pub fn drop_to(user: Option<&User>, keep: &[Capability]) -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // Shrinking the bounding set takes CAP_SETPCAP, which a daemon started
    // with only CAP_NET_ADMIN and CAP_NET_RAW (ambient or file
    // capabilities) does not have. The bounding set only limits what a
    // later execve could gain, and no_new_privs (below) already stops that.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        let bounding =
            caps::read(None, CapSet::Bounding).map_err(caps_err("read the bounding set"))?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_err("drop from the bounding set"))?;
        }
    } else {
        tracing::debug!("no CAP_SETPCAP: bounding set left as is (no_new_privs is set)");
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clear the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clear the inheritable set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys_err("set no_new_privs"))?;
    if let Some(user) = user {
        switch_user(user)?;
    }
    // Effective first: it must stay within the permitted set at each step.
    // After a user switch it is empty and `keep` is still permitted.
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("set the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("set the permitted set"))?;
    Ok(())
}

fn switch_user(user: &User) -> Result<(), PrivilegeError> {
    use nix::unistd::{setgroups, setresgid, setresuid};
    // Keep the permitted set across the uid change; the effective set is
    // cleared by it and raised again by the caller.
    caps::securebits::set_keepcaps(true).map_err(caps_err("set keepcaps"))?;
    setgroups(&[user.gid]).map_err(sys_err("setgroups"))?;
    setresgid(user.gid, user.gid, user.gid).map_err(sys_err(format!("setresgid {}", user.gid)))?;
    setresuid(user.uid, user.uid, user.uid).map_err(sys_err(format!("setresuid {}", user.uid)))?;
    caps::securebits::set_keepcaps(false).map_err(caps_err("clear keepcaps"))?;
    tracing::info!(
        user = user.name,
        uid = user.uid.as_raw(),
        gid = user.gid.as_raw(),
        "switched user"
    );
    Ok(())
}

/// Removes `cap` from the calling thread's permitted and effective sets.
///
/// # Errors
/// [`PrivilegeError::Capabilities`] when a set cannot be changed.
pub fn drop_one(cap: Capability) -> Result<(), PrivilegeError> {
    caps::drop(None, CapSet::Effective, cap).map_err(caps_err("drop from the effective set"))?;
    caps::drop(None, CapSet::Permitted, cap).map_err(caps_err("drop from the permitted set"))?;
    Ok(())
}

/// Once the dataplane has started: the control-plane thread keeps only
/// [`CONTROL_PLANE`] (step 3 of the module doc).
///
/// # Errors
/// As [`drop_one`].
pub fn keep_control_plane_only() -> Result<(), PrivilegeError> {
    for cap in DATAPLANE_START.iter().filter(|c| **c != CONTROL_PLANE) {
        drop_one(*cap)?;
    }
    Ok(())
}

/// Empties the calling thread's permitted and effective sets (a dataplane
/// thread needs no capability for its open descriptors). Errors are ignored:
/// a thread that cannot drop what it has keeps no more than it was given.
pub fn drop_thread_capabilities() {
    let _ = caps::clear(None, CapSet::Effective);
    let _ = caps::clear(None, CapSet::Permitted);
}

/// The calling thread's effective capabilities, sorted by name.
pub fn effective() -> Vec<String> {
    let mut v: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|s| s.into_iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_plane_keeps_net_admin_through_the_start() {
        assert!(DATAPLANE_START.contains(&CONTROL_PLANE));
        assert!(DATAPLANE_START.contains(&Capability::CAP_NET_RAW));
    }

    #[test]
    fn users_are_looked_up_by_name() {
        assert_eq!(look_up_user("root").unwrap().uid.as_raw(), 0);
        let e = look_up_user("tunl-no-such-user").unwrap_err();
        assert!(matches!(e, UserError::NoSuchUser(_)), "{e:?}");
        assert!(e.to_string().contains("tunl-no-such-user"), "{e}");
    }
}
