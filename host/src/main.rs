//! The `weir` binary: parses the command line and hands over to [`weir_host::cli`].

/// A run allocates many small values per row (variable values, record
/// fields, SQLite's own statement memory); mimalloc serves them at a
/// fraction of the system allocator's cost, and DataFusion's own binaries
/// use it for the same reason.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir_host::cli::main()
}
