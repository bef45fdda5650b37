//! tunl's namespace tooling: the seed article's Calico IPIP cluster in
//! network namespaces, for the end-to-end tests, `tunl lab` and `tunl bench`.
//!
//! - [`topology`]: builds clusters of node and pod namespaces (no overlay,
//!   direct routes, or kernel VXLAN) and tears them down on drop;
//! - [`testbed`]: a cluster with a tunl daemon on every node;
//! - [`lab`]: `tunl lab`, the article walked through live;
//! - [`bench`]: `tunl bench`, tunl against veth and kernel VXLAN in one run;
//! - [`capture`]: decodes an underlay capture, both IP layers.
//!
//! Everything here needs root (network namespaces) and drives `ip`, `ping`,
//! `iperf3` and `tcpdump` as subprocesses.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod capture;
pub mod lab;
pub mod testbed;
pub mod topology;
