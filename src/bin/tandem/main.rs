//! `tandem` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod demo;

use clap::Parser;

/// mimalloc: the glibc allocator's arena locking showed up as a fifth of the CPU time under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tandem::install_crypto_provider();
    match cli::run(cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tandem: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
