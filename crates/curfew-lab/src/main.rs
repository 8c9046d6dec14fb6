//! `curfew-lab`: see the crate documentation, or `curfew-lab --help`.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    curfew_lab::cli::run(curfew_lab::cli::Cli::parse())
}
