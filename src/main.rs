//! `ensemble`: predicts which of two chatbot answers a person prefers.
//!
//! This binary wires the command line, configs and files to the `features` and `ensembles`
//! crates; see docs/ARCHITECTURE.md.
mod cli;
mod commands;
mod config;
mod data;
mod example;
mod lgbm_run;
mod report;
mod semantic;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
