//! The IPv4 longest-prefix-match route table of tunl and its concurrent snapshot.
//!
//! - [`Lpm`]: a single-threaded table tuned for pod blocks (one prefix length
//!   dominates), exact for any mix of prefix lengths.
//! - The concurrent table: one [`RouteWriter`], many [`RouteReader`]s that
//!   never block. Each reader sees a whole table, before or after an update,
//!   never half of one (the `table` module doc has the design).
//!
//! ```
//! use std::net::Ipv4Addr;
//! use std::thread;
//!
//! use tunl_routing::{Ipv4Network, RouteWriter};
//!
//! // The daemon's side: one writer, fed from the kernel's routes.
//! let mut routes = RouteWriter::new();
//! let block: Ipv4Network = "10.20.42.0/26".parse().unwrap();
//! let node = Ipv4Addr::new(172, 16, 35, 4);
//! routes.insert(block, node);
//!
//! // A dataplane thread: its own reader, one lookup per packet.
//! let pod = Ipv4Addr::new(10, 20, 42, 31);
//! let reader = routes.reader();
//! let worker = thread::spawn(move || {
//!     let outside = Ipv4Addr::new(10, 20, 43, 1);
//!     (reader.lookup(pod), reader.lookup(outside))
//! });
//! assert_eq!(worker.join().unwrap(), (Some(node), None));
//!
//! // Once `remove` returns, every reader sees the route gone.
//! let reader = routes.reader();
//! assert_eq!(routes.remove(block), Some(node));
//! assert_eq!(reader.lookup(pod), None);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use ipnetwork::Ipv4Network;

mod lpm;
mod table;

pub use lpm::{DEFAULT_BLOCK_LEN, Lpm};
pub use table::{RouteGuard, RouteOp, RouteReader, RouteWriter};
