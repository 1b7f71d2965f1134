//! `cyncd`: a local controller for GE Cync devices, replacing the Cync cloud on the home network.
//!
//! This binary is the command line: `serve` runs the controller; `decode` and `encode` are lab
//! tools for the wire protocol. Each subcommand lives in its own module of the library.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// mimalloc: per-packet allocations (ours and OpenSSL's, for every TLS record) were a tenth of
/// the server's CPU with the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use cyncd::cli::{account, client, decode, devices, doctor, encode, replay, sim};
use cyncd::serve;
use std::process::ExitCode;

/// cyncd: local control for GE Cync Wi-Fi and Bluetooth-mesh devices.
///
/// Cync Wi-Fi devices connect over TLS to port 23779 (once their DNS names point here) and speak
/// a small binary protocol. cyncd answers them as the cloud would.
#[derive(Debug, Parser)]
#[command(name = "cyncd", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(Box<serve::Args>),
    Account(account::Args),
    Set(client::SetArgs),
    Toggle(client::ToggleArgs),
    Devices(devices::Args),
    Doctor(Box<doctor::Args>),
    Sim(sim::Args),
    Demo(sim::DemoArgs),
    Decode(decode::Args),
    Encode(encode::Args),
    Replay(replay::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Account(args) => account::run(&args),
        Command::Set(args) => client::set(&args),
        Command::Toggle(args) => client::toggle(&args),
        Command::Devices(args) => devices::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Sim(args) => sim::run(&args),
        Command::Demo(args) => sim::demo(&args),
        Command::Decode(args) => quiet_on_broken_pipe(decode::run(&args)),
        Command::Encode(args) => encode::run(&args),
        Command::Replay(args) => replay::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cyncd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A reader that stopped reading our output (`cyncd decode … | head`) is not a failure: stop
/// quietly with success, as line-oriented tools do.
fn quiet_on_broken_pipe(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        other => other,
    }
}
