//! The `weir` binary: parses the command line and hands over to [`weir_host::cli`].

fn main() -> std::process::ExitCode {
    weir_host::cli::main()
}
