//! tunl's namespace tooling: the seed article's Calico IPIP cluster in
//! network namespaces, for the end-to-end tests, `tunl lab` and `tunl bench`.
//!
//! One family, in layers; each module builds on the ones above it:
//!
//! - [`topology`]: building a cluster: node and pod namespaces on an
//!   underlay, pods wired as Calico wires them, and between blocks nothing,
//!   direct routes or kernel VXLAN; running and measuring inside it
//!   (`ping`, `iperf3`); removing it all on drop. No tunl in it.
//! - [`testbed`]: a topology cluster with a tunl daemon on every node
//!   ([`testbed::TunlCluster`]), what the end-to-end tests in `tests/` run on.
//! - [`lab`]: `tunl lab`, the article walked through live on a testbed.
//! - [`bgp`]: the seed's control plane on a testbed: BIRD 2 on every node
//!   and on route reflectors installs the routes tunl forwards on
//!   (`tunl lab --bgp`, the BGP end-to-end tests).
//! - [`bench`](mod@bench): `tunl bench`, tunl (on a testbed) against plain
//!   veth and kernel VXLAN (topology clusters) in one run.
//! - [`capture`]: decoding the underlay capture that `tunl lab` takes, both
//!   IP layers of IPIP.
//!
//! Everything that builds namespaces needs root (`CAP_NET_ADMIN` and
//! `CAP_SYS_ADMIN`) and drives `ip`, `ping`, `iperf3` and `tcpdump` as
//! subprocesses (and `bird`/`birdc` for [`bgp`]); the parsers, the report and the capture decoder do not.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod bgp;
pub mod capture;
pub mod lab;
pub mod testbed;
pub mod topology;
