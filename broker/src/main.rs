//! The `credbroker` binary: parse the command line, run it. Everything else lives in the
//! library (see `cli.rs`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    credbroker::cli::main()
}
