//! Dropping privileges once the daemon has set up.
//!
//! Capabilities are per thread on Linux, and a new thread starts with its
//! creator's. So the daemon drops in three steps:
//!
//! 1. [`drop_to`] before the dataplane threads start, once the TUN device
//!    and the IPIP/ICMP receive sockets are open: the bounding set (when
//!    the process holds CAP_SETPCAP to do so), inheritable and ambient sets
//!    are emptied, `no_new_privs` is set, the process
//!    optionally switches to `[security] user` (setresuid/setresgid, which
//!    glibc applies to every thread), and the permitted and effective sets
//!    become `CAP_NET_ADMIN` and `CAP_NET_RAW` (the router still opens one raw
//!    send socket per worker).
//! 2. [`drop_thread_capabilities`] at the start of every dataplane thread:
//!    reading and writing open descriptors needs no capability, so workers
//!    run with none.
//! 3. [`drop_one`] of `CAP_NET_RAW` on the control-plane thread once the
//!    router has started: it keeps only `CAP_NET_ADMIN`, for netlink route
//!    changes at runtime and removing the device at exit.

use caps::{CapSet, Capability, CapsHashSet};

/// What the control plane keeps for good.
pub const CONTROL_PLANE: Capability = Capability::CAP_NET_ADMIN;

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop privileges: {0}")]
pub struct PrivilegeError(String);

fn err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError + '_ {
    move |e| PrivilegeError(format!("{what}: {e}"))
}

/// Drops the bounding, inheritable and ambient sets, sets `no_new_privs`,
/// switches to `user` when given, and leaves `keep` as the permitted and
/// effective sets of the calling thread (and of threads it starts later).
pub fn drop_to(user: Option<&str>, keep: &[Capability]) -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // Shrinking the bounding set takes CAP_SETPCAP, which a daemon started
    // with only CAP_NET_ADMIN and CAP_NET_RAW (ambient or file
    // capabilities) does not have. The bounding set only limits what a
    // later execve could gain, and no_new_privs (below) already stops that.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(err("read the bounding set"))?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(err("drop from the bounding set"))?;
        }
    } else {
        tracing::debug!("no CAP_SETPCAP: bounding set left as is (no_new_privs is set)");
    }
    caps::clear(None, CapSet::Ambient).map_err(err("clear the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clear the inheritable set"))?;
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| PrivilegeError(format!("set no_new_privs: {e}")))?;
    if let Some(name) = user {
        switch_user(name)?;
    }
    // Effective first: it must stay within the permitted set at each step.
    // After a user switch it is empty and `keep` is still permitted.
    caps::set(None, CapSet::Effective, &keep).map_err(err("set the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("set the permitted set"))?;
    Ok(())
}

fn switch_user(name: &str) -> Result<(), PrivilegeError> {
    use nix::unistd::{User, setgroups, setresgid, setresuid};
    let user = User::from_name(name)
        .map_err(|e| PrivilegeError(format!("look up user {name:?}: {e}")))?
        .ok_or_else(|| PrivilegeError(format!("no user {name:?} (security.user)")))?;
    // Keep the permitted set across the uid change; the effective set is
    // cleared by it and raised again by the caller.
    caps::securebits::set_keepcaps(true).map_err(err("set keepcaps"))?;
    setgroups(&[user.gid]).map_err(|e| PrivilegeError(format!("setgroups: {e}")))?;
    setresgid(user.gid, user.gid, user.gid)
        .map_err(|e| PrivilegeError(format!("setresgid {}: {e}", user.gid)))?;
    setresuid(user.uid, user.uid, user.uid)
        .map_err(|e| PrivilegeError(format!("setresuid {}: {e}", user.uid)))?;
    caps::securebits::set_keepcaps(false).map_err(err("clear keepcaps"))?;
    tracing::info!(
        user = name,
        uid = user.uid.as_raw(),
        gid = user.gid.as_raw(),
        "switched user"
    );
    Ok(())
}

/// Removes `cap` from the calling thread's permitted and effective sets.
pub fn drop_one(cap: Capability) -> Result<(), PrivilegeError> {
    caps::drop(None, CapSet::Effective, cap).map_err(err("drop from the effective set"))?;
    caps::drop(None, CapSet::Permitted, cap).map_err(err("drop from the permitted set"))?;
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
