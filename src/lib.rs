//! tunl: a userspace IPIP tunnel router.
