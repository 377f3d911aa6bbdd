//! `nightshift bench`: whole-system measurements that print their method.

mod boot;
mod threads;

use clap::Subcommand;

/// What to measure.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// VMM start → first guest instruction → guest banner, and the VMM's peak RSS
    /// apart from guest memory, over repeated boots of the built-in test guest.
    Boot(boot::BootArgs),
}

/// Runs a benchmark.
pub fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Boot(args) => boot::run(args),
    }
}
