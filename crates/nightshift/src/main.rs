//! `nightshift`: run a guest, or measure.

mod bench;
mod run;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// A KVM VMM in which idle guest vCPUs do the VMM's deferred device work.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest (by default the built-in test guest) and run it to the end.
    Run(run::RunArgs),
    /// Measure nightshift: the scenario set by default, `bench boot` for start-up.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NIGHTSHIFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    // A panic on this thread (the VM's main thread) still ends with a named
    // reason and a distinct status, not Rust's bare 101; the VM's other
    // threads report their own panics as the VM's exit (vmm::vmm_thread).
    let result = std::panic::catch_unwind(move || match cli.command {
        Command::Run(args) => run::run(args, started),
        Command::Bench(args) => bench::bench(args).map(|()| 0),
    });
    let result = match result {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let reason = vmm::ExitReason::Panic {
                thread: "main".into(),
                message,
            };
            eprintln!("nightshift: {reason}");
            return ExitCode::from(reason.exit_code() as u8);
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nightshift: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
