//! tunl: a userspace IPIP tunnel router.

pub mod topology;
