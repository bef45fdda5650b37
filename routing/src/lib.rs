//! The IPv4 longest-prefix-match route table of tunl and its concurrent snapshot.
//!
//! - [`Lpm`]: a single-threaded table tuned for pod blocks (one prefix length
//!   dominates), exact for any mix of prefix lengths.
//! - [`RouteTable`]: one [`RouteWriter`], many [`RouteReader`]s that never block
//!   (see the `table` module doc for the design).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use ipnetwork::Ipv4Network;

mod lpm;
mod table;

pub use lpm::{DEFAULT_BLOCK_LEN, Lpm};
pub use table::{RouteGuard, RouteOp, RouteReader, RouteTable, RouteWriter};
