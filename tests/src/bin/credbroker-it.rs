//! The daemon under test: exactly the `credbroker` binary's entry point.
fn main() -> std::process::ExitCode {
    credbroker::cli::main()
}
