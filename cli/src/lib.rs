//! The `tunl` command line: argument parsing (clap), the commands, their
//! text and JSON output, and the one table of exit codes.
//!
//! The binary (`src/main.rs`) only calls [`main`]. The daemon is the `tunl`
//! crate; `tunl lab` and `tunl bench` come from `tunl-lab`.

#![forbid(unsafe_code)]

pub mod args;
pub mod check;
pub mod commands;
pub mod exit;
pub mod generate;
pub mod logging;
pub mod status;

pub use args::main;
