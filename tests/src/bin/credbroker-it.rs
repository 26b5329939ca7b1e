//! The daemon under test: exactly the `credbroker` binary's entry point.
#[global_allocator]
static ALLOCATOR: credbroker::Allocator = credbroker::Allocator;

fn main() -> std::process::ExitCode {
    credbroker::cli::main()
}
