//! `cyncd devices`: the device side of a server — today, forgetting a bridge's auth pin.

use crate::devices::auth::{AuthStore, Forgot};
use anyhow::{Context as _, bail};

/// Manage the devices a server trusts.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum Command {
    Forget(ForgetArgs),
}

/// Forget a bridge's auth-code pin, after a device was replaced or reset.
///
/// cyncd pins the auth code of each bridge's first hello and refuses any other code for that
/// bridge id from then on. A device that comes back with a new code (a replacement, a reset, a
/// new Cync account) is refused until its pin is forgotten; its next hello is then pinned again.
/// By default this asks the running server (which also closes the bridge's connection); with
/// --offline it edits the pin file in the state directory of a stopped server. Pins from the
/// configuration ([device_auth] codes) are changed there.
#[derive(Debug, Clone, clap::Args)]
struct ForgetArgs {
    /// The bridge id (8 hex digits, as in /api/connections and the logs).
    bridge: String,
    /// Edit the pin file in the state directory (--state-dir) instead of asking a running
    /// server (stop the server first: a running one keeps its pins in memory and writes them
    /// back).
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    api: super::http::ApiArgs,
}

/// Runs `cyncd devices`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    match &args.command {
        Command::Forget(f) => forget(f),
    }
}

fn forget(args: &ForgetArgs) -> anyhow::Result<()> {
    let conn = cync_proto::ConnId::from_hex(&args.bridge)
        .with_context(|| format!("{:?} is not a bridge id (8 hex digits)", args.bridge))?;
    if !args.offline {
        let path = format!("/api/bridges/{conn}/auth");
        args.api.client()?.delete(&path)?.ok()?;
        println!("bridge {conn}: pin forgotten; its next hello is pinned again");
        return Ok(());
    }
    let dir = &args
        .api
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::config::Config::default().state_dir);
    let store = AuthStore::open(dir, true)?;
    match store.forget(conn) {
        Forgot::Removed => {
            store.save()?;
            println!("bridge {conn}: pin forgotten in {}", dir.display());
            Ok(())
        }
        Forgot::Unknown => bail!("bridge {conn} has no pin in {}", dir.display()),
        Forgot::Kept(source) => bail!(
            "bridge {conn}'s code is pinned by the {}; change it there",
            source.origin()
        ),
    }
}
