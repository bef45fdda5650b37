//! The `tunl` command (see the `tunl_cli` library).

fn main() -> std::process::ExitCode {
    tunl_cli::main()
}
