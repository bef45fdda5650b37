fn main() -> std::process::ExitCode {
    tunl::cli::main()
}
