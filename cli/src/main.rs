//! The `tunl` command (see the `tunl_cli` library).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tunl_cli::main()
}
