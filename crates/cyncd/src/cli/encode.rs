//! `cyncd encode`: build one packet by hand and print it as hex, for lab work and packet
//! crafting.

use anyhow::{Context, bail};
use cync_proto::command::{self, MESH_ACK_SEQ, MESH_REQUEST_SEQ};
use cync_proto::{Action, ConnId, Effect, MsgId, Seq, SwitchMode, Target};

/// Build a command packet and print it as hex byte pairs.
///
/// Example (the real cloud's ON command for mesh device 5):
///
///   cyncd encode power on --conn-id 2de4b5d2 --msg-id 153700 --seq 0x21 --target 5
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
    /// Connection id `[5:9]`: 8 hex digits (the device's id from its hello).
    #[arg(long, global = true, value_name = "HEX", value_parser = parse_conn)]
    conn_id: Option<ConnId>,
    /// Message id `[9:12]`: 6 hex digits.
    #[arg(long, global = true, value_name = "HEX", value_parser = parse_msg, default_value = "000000")]
    msg_id: MsgId,
    /// Inner sequence byte, decimal or 0x-hex (default 1; mesh-info 0x1f, mesh-ack 0x1e).
    #[arg(long, global = true, value_name = "N", value_parser = parse_u8)]
    seq: Option<u8>,
    /// Target mesh device id (or group id with --group).
    #[arg(long, global = true, value_name = "N", value_parser = parse_u16)]
    target: Option<u16>,
    /// The target is a group.
    #[arg(long, global = true)]
    group: bool,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Power: on or off.
    Power {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Brightness 0-100.
    Brightness { value: u8 },
    /// White colour temperature 0-100 (0 warm, 100 cool).
    ColorTemp { value: u8 },
    /// RGB colour, three values 0-255.
    Rgb { r: u8, g: u8, b: u8 },
    /// A factory effect: candle, cyber, rainbow, fireworks, volcanic, aurora, happy_holidays,
    /// red_white_blue, vegas, party_time.
    Effect { name: String },
    /// Fan speed 0-100 (devices step 0/25/50/75/100).
    FanSpeed { value: u8 },
    /// Wall-switch mode.
    SwitchMode {
        #[arg(value_parser = ["smart", "traditional"])]
        mode: String,
    },
    /// Mesh-info request (asks the bridge for every mesh device it reaches).
    MeshInfo,
    /// Mesh status ACK, sent after a mesh-info answer.
    MeshAck,
    /// The 0xA3 "want to control" announce.
    Announce,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let packet = build(args)?;
    let text: Vec<String> = packet
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("{}", text.join(" "));
    Ok(())
}

fn build(args: &Args) -> anyhow::Result<cync_proto::Packet> {
    let conn = args.conn_id.context("--conn-id is required")?;
    let msg = args.msg_id;
    let action = match &args.what {
        What::MeshInfo => {
            let seq = Seq(args.seq.unwrap_or(MESH_REQUEST_SEQ.0));
            return Ok(command::mesh_info_request(conn, msg, seq));
        }
        What::MeshAck => {
            let seq = Seq(args.seq.unwrap_or(MESH_ACK_SEQ.0));
            return Ok(command::mesh_status_ack(conn, msg, seq));
        }
        What::Announce => return Ok(command::announce(conn, msg)),
        What::Power { state } => Action::Power(state == "on"),
        What::Brightness { value } => Action::Brightness(*value),
        What::ColorTemp { value } => Action::ColorTemp(*value),
        What::Rgb { r, g, b } => Action::Rgb([*r, *g, *b]),
        What::Effect { name } => match Effect::from_name(name) {
            Some(effect) => Action::Effect(effect),
            None => {
                let names: Vec<&str> = Effect::ALL.iter().map(|e| e.name()).collect();
                bail!("unknown effect {name:?}; one of: {}", names.join(", "))
            }
        },
        What::FanSpeed { value } => Action::FanSpeed(*value),
        What::SwitchMode { mode } => Action::SwitchMode(if mode == "smart" {
            SwitchMode::Smart
        } else {
            SwitchMode::Traditional
        }),
    };
    let id = args
        .target
        .context("--target is required for this command")?;
    let target = if args.group {
        Target::Group(id)
    } else {
        Target::Device(id)
    };
    let seq = Seq(args.seq.unwrap_or(1));
    Ok(command::command(conn, msg, seq, target, action)?)
}

fn parse_conn(s: &str) -> Result<ConnId, String> {
    ConnId::from_hex(s).ok_or_else(|| format!("expected 8 hex digits, got {s:?}"))
}

fn parse_msg(s: &str) -> Result<MsgId, String> {
    MsgId::from_hex(s).ok_or_else(|| format!("expected 6 hex digits, got {s:?}"))
}

fn parse_num(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("expected a number (decimal or 0x-hex), got {s:?}"))
}

fn parse_u8(s: &str) -> Result<u8, String> {
    u8::try_from(parse_num(s)?).map_err(|_| format!("{s} does not fit in one byte (0-255)"))
}

fn parse_u16(s: &str) -> Result<u16, String> {
    u16::try_from(parse_num(s)?).map_err(|_| format!("{s} does not fit in 16 bits (0-65535)"))
}
