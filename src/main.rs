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
    settle_openmp_waiting();
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Set by the re-executed process (and by a user who wants libgomp's own defaults).
const OPENMP_AS_IS: &str = "ENSEMBLE_OPENMP_AS_IS";

/// How long LightGBM's idle OpenMP threads spin before they sleep, in libgomp's spin
/// iterations. libgomp's default (300,000 when `OMP_WAIT_POLICY` is unset) burns cores that
/// other processes need, which on a busy machine slows boosting many times over; `PASSIVE` (no
/// spinning) makes every wake-up a futex call, which on small data, with many short parallel
/// regions, tripled the run time. This middle value kept most of both (BENCHMARKS.md,
/// "Threads").
const OPENMP_SPIN_COUNT: &str = "10000";

/// libgomp reads its wait settings once, when it is loaded, before `main` runs: setting them
/// here would be too late for this process. So, unless the user has chosen them, the binary
/// runs itself again once with `GOMP_SPINCOUNT` set (written by hand because no crate sets
/// an OpenMP runtime's settings before it loads). Should that fail, this process carries on
/// with libgomp's defaults.
fn settle_openmp_waiting() {
    let chosen = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT", OPENMP_AS_IS]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
    if chosen {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    // `exec` returns only when it failed; the process then goes on as it is.
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    let _ = command
        .args(args)
        .env("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
        .env(OPENMP_AS_IS, "1")
        .exec();
}
