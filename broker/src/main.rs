//! The `credbroker` binary: parse the command line, run it. Everything else lives in the
//! library (see `cli.rs`).
#![forbid(unsafe_code)]

#[global_allocator]
static ALLOCATOR: credbroker::Allocator = credbroker::Allocator;

fn main() -> std::process::ExitCode {
    credbroker::cli::main()
}
