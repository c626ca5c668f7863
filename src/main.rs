//! The `twossp-engine` command line: parse, run, and turn every error into one line and exit code 1.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = twossp_engine::cli::Cli::parse();
    if let Err(e) = twossp_engine::fsutil::interrupt::install() {
        eprintln!("error: cannot install the SIGINT/SIGTERM handler: {e}");
        return ExitCode::FAILURE;
    }
    match twossp_engine::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
