//! `cyncd account`: names, types and rooms of the user's devices from their Cync account
//! (`login`, then `export`) or from the `cync_mesh.yaml` the Python controllers wrote
//! (`import`), into the homes file of the state directory that `cyncd serve` reads.
//!
//! Prompts go to stderr and read stdin, so the commands also run from scripts (e-mail and code
//! on stdin, password from `--password-file`); the password is read without echo from a
//! terminal and is never stored or printed.

use crate::config::Config;
use crate::homes::cloud::{Client, CloudError, Token};
use crate::homes::export::{self, Export};
use crate::homes::file::{HOMES_FILE, HomesFile, PREVIOUS_FILE};
use crate::homes::mesh_yaml;
use anyhow::{Context as _, bail};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Names, types and rooms from your Cync account or your existing cync_mesh.yaml.
///
/// `login` then `export` read the account (an e-mailed one-time code is needed to log in);
/// `import` reads the cync_mesh.yaml of cync-lan or the Cync add-on. Both write the homes file
/// (homes.json in the state directory, the previous version kept as homes.json.previous),
/// which `cyncd serve` reads at start and again on SIGHUP. The configuration's `[[homes]]` win
/// where both set a value.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Login(LoginArgs),
    Export(ExportArgs),
    Import(ImportArgs),
    Logout(LogoutArgs),
}

/// Forget the cached Cync login.
#[derive(Debug, clap::Args)]
struct LogoutArgs {
    #[command(flatten)]
    at: Where,
}

/// Where the state directory and the API are.
#[derive(Debug, Clone, clap::Args)]
struct Where {
    /// cyncd's configuration (for its state_dir and [account] settings).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The state directory [default: the configuration's, else $XDG_STATE_HOME/cyncd].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// The Cync account API.
#[derive(Debug, Clone, clap::Args)]
struct Api {
    /// Base URL of the Cync account API [default: the configuration's, else
    /// https://api.gelighting.com/v2/].
    #[arg(long, value_name = "URL")]
    api_base: Option<String>,
    /// Seconds allowed for each request [default: 20].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

/// Log in to the Cync account and cache the login (0600) in the state directory.
///
/// Asks for the e-mail and the password (or reads it from --password-file), has Cync e-mail a
/// one-time code, then asks for the code. The login is reused by `export` until it expires.
#[derive(Debug, clap::Args)]
struct LoginArgs {
    #[command(flatten)]
    at: Where,
    #[command(flatten)]
    api: Api,
    /// The account's e-mail [default: asked].
    #[arg(long, value_name = "EMAIL")]
    email: Option<String>,
    /// A file whose first line is the password [default: asked, without echo].
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Export the homes right after logging in.
    #[arg(long)]
    export: bool,
}

/// Export the account's homes, devices and rooms into the homes file.
#[derive(Debug, clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    at: Where,
    #[command(flatten)]
    api: Api,
    /// Show what would be written, and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Import a cync_mesh.yaml (from cync-lan or the Cync add-on) into the homes file.
#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The cync_mesh.yaml.
    file: PathBuf,
    #[command(flatten)]
    at: Where,
    /// Show what would be written, and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `cyncd account …`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    match &args.command {
        Command::Login(a) => login(a),
        Command::Export(a) => {
            let (config, state) = settings(&a.at)?;
            let client = client(&config, &a.api)?;
            runtime()?.block_on(export_into(&client, &state, a.dry_run))
        }
        Command::Import(a) => import(a),
        Command::Logout(a) => {
            let (_, state) = settings(&a.at)?;
            if Token::forget(&state)? {
                println!("Forgot the Cync login cached in {}.", state.display());
            } else {
                println!("No Cync login was cached in {}.", state.display());
            }
            Ok(())
        }
    }
}

/// The configuration (for `[account]`) and the state directory.
fn settings(at: &Where) -> anyhow::Result<(Config, PathBuf)> {
    let config = match &at.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let state = at
        .state_dir
        .clone()
        .unwrap_or_else(|| config.state_dir.clone());
    Ok((config, state))
}

fn client(config: &Config, api: &Api) -> anyhow::Result<Client> {
    let base = api.api_base.as_deref().unwrap_or(&config.account.api_base);
    let secs = api
        .timeout
        .unwrap_or(config.account.timeout_secs)
        .clamp(1, 600);
    Ok(Client::new(base, Duration::from_secs(secs))?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn login(a: &LoginArgs) -> anyhow::Result<()> {
    let (config, state) = settings(&a.at)?;
    let client = client(&config, &a.api)?;
    let email = match &a.email {
        Some(e) => e.trim().to_string(),
        None => ask("Cync account e-mail: ")?,
    };
    if !email.contains('@') {
        bail!("{email:?} is not an e-mail address");
    }
    let password = match &a.password_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the password file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password("Cync account password: ")?
        }
        None => ask("Cync account password: ")?,
    };
    if password.is_empty() {
        bail!("no password given");
    }
    let rt = runtime()?;
    rt.block_on(client.request_code(&email))?;
    eprintln!("Cync is e-mailing a one-time code to {email}.");
    let code = ask("One-time code from the e-mail: ")?;
    if code.is_empty() {
        bail!("no code given; run cyncd account login again to get a new one");
    }
    let token = rt.block_on(client.login(&email, &password, &code))?;
    drop(password);
    token.save(&state)?;
    println!(
        "Logged in as {email}; the login is cached in {} until {}.",
        state.join(crate::homes::cloud::TOKEN_FILE).display(),
        token.expires()
    );
    if a.export {
        return rt.block_on(export_into(&client, &state, false));
    }
    println!("Next: cyncd account export");
    Ok(())
}

/// One line from stdin after a prompt on stderr.
fn ask(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    // One line, bounded: stdin may be anything.
    std::io::stdin()
        .lock()
        .take(4096)
        .read_line(&mut line)
        .context("reading stdin")?;
    Ok(line.trim().to_string())
}

async fn export_into(client: &Client, state: &Path, dry_run: bool) -> anyhow::Result<()> {
    let token = Token::current(state)?;
    let Export { file, notes } = match export::export(client, &token).await {
        Ok(e) => e,
        Err(export::ExportError::Cloud(CloudError::Expired)) => {
            bail!(
                "the Cync login of {} expired (Cync error {}). Log in again: cyncd account login",
                token.email,
                crate::homes::cloud::EXPIRED
            )
        }
        Err(e) => return Err(e.into()),
    };
    summary(&file, &notes);
    write(&file, state, dry_run)
}

fn import(a: &ImportArgs) -> anyhow::Result<()> {
    let (_, state) = settings(&a.at)?;
    let mut text = String::new();
    std::fs::File::open(&a.file)
        .with_context(|| format!("opening {}", a.file.display()))?
        .take(mesh_yaml::MAX_YAML_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {} (is it a text file?)", a.file.display()))?;
    let imported = mesh_yaml::import(&text, &a.file.display().to_string())
        .with_context(|| format!("{} was not imported", a.file.display()))?;
    let report = &imported.report;
    summary(&imported.file, &[]);
    let section = |title: &str, lines: &[String]| {
        if !lines.is_empty() {
            println!("{title}:");
            for l in lines {
                println!("  {l}");
            }
        }
    };
    section("Taken", &report.taken);
    section("Kinds inferred", &report.inferred);
    section("Hidden (enabled: false)", &report.hidden);
    section("Ignored", &report.ignored);
    section("Kept in the homes file without being used", &report.kept);
    section("Settings found", &report.settings);
    if report.mqtt_url.is_some() {
        println!(
            "  To use this broker: set [mqtt] url in cyncd's configuration (or pass --mqtt) to the mqtt_url of the file."
        );
    }
    write(&imported.file, &state, a.dry_run)
}

fn summary(file: &HomesFile, notes: &[String]) {
    let hidden: usize = file
        .homes
        .iter()
        .map(|h| h.devices.iter().filter(|d| !d.enabled).count())
        .sum();
    println!(
        "{}: {} home(s), {} device(s){}, {} room(s)",
        file.source,
        file.homes.len(),
        file.device_count(),
        if hidden > 0 {
            format!(" ({hidden} hidden)")
        } else {
            String::new()
        },
        file.room_count()
    );
    for h in &file.homes {
        let rooms: Vec<&str> = h
            .groups
            .iter()
            .filter(|g| !g.subgroup)
            .map(|g| g.name.as_str())
            .collect();
        println!(
            "  {:?}: {} devices; rooms: {}",
            h.name,
            h.devices.len(),
            if rooms.is_empty() {
                "none".to_string()
            } else {
                rooms.join(", ")
            }
        );
    }
    for n in notes {
        println!("  note: {n}");
    }
    let unknown: Vec<String> = file
        .homes
        .iter()
        .flat_map(|h| h.devices.iter())
        .filter_map(|d| d.kind.map(|k| (k, d)))
        .filter(|(k, _)| !cync_proto::catalog::DeviceType::of(Some(*k)).is_known())
        .map(|(k, d)| format!("{:?} (type {k})", d.name))
        .collect();
    if !unknown.is_empty() {
        println!(
            "  Types cyncd does not know yet (shown as on/off lights; please report them with the product names): {}",
            unknown.join(", ")
        );
    }
}

fn write(file: &HomesFile, state: &Path, dry_run: bool) -> anyhow::Result<()> {
    if dry_run {
        println!(
            "Dry run: nothing written ({} would be).",
            state.join(HOMES_FILE).display()
        );
        return Ok(());
    }
    let had = state.join(HOMES_FILE).exists();
    let path = file.save(state)?;
    println!("Wrote {}.", path.display());
    if had {
        println!(
            "The version before is kept as {}.",
            state.join(PREVIOUS_FILE).display()
        );
    }
    println!(
        "cyncd serve reads it at start (with --state-dir {}); a running cyncd reads it again on SIGHUP.",
        state.display()
    );
    Ok(())
}
