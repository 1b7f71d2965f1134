//! `cyncd decode`: captured traffic to JSON Lines, one object per packet.
//!
//! A capture of many connections carries no connection tag, so each of its records (one TCP
//! read) is framed on its own. A file `cyncd serve --capture` wrote holds one connection (its
//! first line says so, [`capture::FileHeader`]): each direction is framed as the stream it was,
//! so a packet split over two reads is one packet, and the parts of one connection given in
//! order continue each other. Every packet becomes one line; bytes left that are not a whole
//! packet (at the end of a record, or of a stream) become `{record, trailing}`. A per-type
//! summary goes to stderr. The exit status is 0 whenever the input could be read, whatever it
//! contained.
//!
//! A hello's auth code is a device's secret: with `--redact` (the default when standard output
//! is a terminal) it is masked in `raw`, `detail` and `trailing`.

use anyhow::Context;
use cync_proto::capture::{self, Direction};
use cync_proto::{Body, Framer, OversizePolicy, Packet, PacketType};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};

/// Decode captured Cync traffic into JSON Lines.
///
/// Reads the capture format (a header line `<UTC timestamp> <DEV→CLOUD|CLOUD→DEV>[ [INJECTED]]
/// (<n> bytes)`, a line of hex bytes, a blank line) and writes one JSON object per packet with
/// `record`, `ts`, `dir` ("dev" or "srv"), `upstream` (relay mode, between cyncd and the
/// cloud), `type`, `name`, `len`, `conn_id`, `msg_id`, `checksum_ok` (0x73/0x83), `statuses`,
/// `raw` (hex re-encoded from the decoded packet) or `error`. A summary per packet type goes to
/// stderr. Files written by `cyncd serve --capture` are one connection each: a packet split
/// over two reads is decoded whole, and the parts of one connection can be given in order.
///
/// A hello's `detail` shows its auth code (the device's secret, also inside `raw`); --redact
/// masks it in `raw`, `detail` and `trailing`, and is the default when standard output is a
/// terminal (--no-redact shows it there).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capture files to read, in order; `-` or nothing reads standard input.
    #[arg(value_name = "FILE|-")]
    files: Vec<String>,
    /// Decode one packet given as hex (spaces optional) instead of a file.
    #[arg(long, value_name = "BYTES", conflicts_with = "files")]
    hex: Option<String>,
    /// With --hex: who sent the packet, `dev` (device to server) or `srv`.
    #[arg(long, default_value = "dev", value_parser = ["dev", "srv"], requires = "hex")]
    dir: String,
    /// Largest packet accepted, in bytes; a longer header is reported and skipped.
    #[arg(long, default_value_t = cync_proto::DEFAULT_MAX_PACKET, value_name = "BYTES")]
    max_packet: usize,
    /// Mask hello auth codes [default: when standard output is a terminal].
    #[arg(long, overrides_with = "no_redact")]
    redact: bool,
    /// Show hello auth codes, even on a terminal.
    #[arg(long, overrides_with = "redact")]
    no_redact: bool,
}

/// How the output is written.
#[derive(Debug, Clone, Copy)]
struct Options {
    max_packet: usize,
    redact: bool,
}

impl Options {
    /// A framer for one record or one stream.
    fn framer(self) -> Framer {
        Framer::new(self.max_packet).with_policy(OversizePolicy::Resync)
    }

    /// Hex of `bytes`, a hello's auth code masked when redacting.
    fn hex(self, bytes: &[u8]) -> String {
        if self.redact {
            crate::logging::redacted_hex(bytes)
        } else {
            hex(bytes)
        }
    }
}

/// Runs the subcommand.
pub fn run(args: &Args) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    let options = Options {
        max_packet: args.max_packet,
        redact: args.redact || (!args.no_redact && stdout.is_terminal()),
    };
    let mut out = BufWriter::new(stdout.lock());
    let mut summary = Summary::default();
    if let Some(hex) = &args.hex {
        let bytes = capture::parse_hex(hex).context("--hex: expected hex byte pairs")?;
        let dir = if args.dir == "srv" {
            Direction::Server
        } else {
            Direction::Device
        };
        let mut record = capture::Record::new(String::new(), dir, bytes);
        record.declared = None;
        let mut framer = options.framer();
        decode_record(&record, &mut framer, options, &mut out, &mut summary)?;
        trailing(&record, &framer, options, &mut out, &mut summary)?;
    } else {
        let files: Vec<Option<&str>> = if args.files.is_empty() {
            vec![None]
        } else {
            args.files.iter().map(|f| Some(f.as_str())).collect()
        };
        let mut streams = Streams::default();
        let mut offset = 0;
        for file in files {
            let text = read_input(file)?;
            // One connection's file: its directions are streams, continued by its next part.
            let connection = capture::FileHeader::of(&text).map(|h| h.connection);
            if connection.is_none() || connection != streams.connection {
                streams.end(options, &mut out, &mut summary)?;
                streams.connection = connection;
            }
            let mut count = 0;
            for record in capture::parse(&text) {
                count += 1;
                match record {
                    Ok(mut record) => {
                        record.index += offset;
                        streams.decode(record, options, &mut out, &mut summary)?;
                    }
                    Err(e) => {
                        summary.bad_records += 1;
                        let line =
                            json!({"record": e.index + offset, "line": e.line, "error": e.reason});
                        writeln!(out, "{line}")?;
                    }
                }
            }
            offset += count;
        }
        streams.end(options, &mut out, &mut summary)?;
    }
    out.flush()?;
    summary.print();
    Ok(())
}

/// The framers of one connection's directions, when the input is one connection's file.
#[derive(Default)]
struct Streams {
    /// The connection (`None`: a capture of many connections, each record framed alone).
    connection: Option<String>,
    /// Per direction and leg: its framer and the last record that fed it.
    framers: BTreeMap<(&'static str, bool), (Framer, capture::Record)>,
}

impl Streams {
    fn decode(
        &mut self,
        record: capture::Record,
        options: Options,
        out: &mut impl Write,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        if self.connection.is_none() {
            let mut framer = options.framer();
            decode_record(&record, &mut framer, options, out, summary)?;
            return trailing(&record, &framer, options, out, summary);
        }
        if record.gap {
            // Records were lost before this one: what was pending cannot be completed.
            self.end(options, out, summary)?;
        }
        let key = (record.dir.tag(), record.upstream);
        let (framer, last) = self
            .framers
            .entry(key)
            .or_insert_with(|| (options.framer(), record.clone()));
        decode_record(&record, framer, options, out, summary)?;
        *last = record;
        Ok(())
    }

    /// Reports the bytes each stream holds that are not a whole packet, and forgets them.
    fn end(
        &mut self,
        options: Options,
        out: &mut impl Write,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        for (framer, last) in std::mem::take(&mut self.framers).values() {
            trailing(last, framer, options, out, summary)?;
        }
        Ok(())
    }
}

fn read_input(file: Option<&str>) -> anyhow::Result<String> {
    let mut text = String::new();
    match file {
        None | Some("-") => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
        }
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    Ok(text)
}

/// Frames a record's bytes with `framer` (which may hold the start of a packet from an earlier
/// record of the same stream) and writes a line per whole packet.
fn decode_record(
    record: &capture::Record,
    framer: &mut Framer,
    options: Options,
    out: &mut impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    summary.records += 1;
    if record.declared.is_some_and(|n| n != record.bytes.len()) {
        summary.size_mismatches += 1;
    }
    let mut input = record.bytes.as_slice();
    loop {
        let taken = framer.push(input);
        input = input.get(taken..).unwrap_or_default();
        while let Some(next) = framer.next_packet() {
            let line = match next {
                Ok(bytes) => packet_json(record, bytes, options, summary),
                Err(e) => {
                    summary.errors += 1;
                    json!({"record": record.index, "ts": record.ts, "dir": record.dir.tag(), "error": e.to_string()})
                }
            };
            writeln!(out, "{line}")?;
        }
        if input.is_empty() || taken == 0 {
            break;
        }
    }
    Ok(())
}

/// Reports the bytes `framer` holds that are not a whole packet, as left by `record`.
fn trailing(
    record: &capture::Record,
    framer: &Framer,
    options: Options,
    out: &mut impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let trailing = framer.remainder();
    if !trailing.is_empty() {
        summary.trailing += 1;
        writeln!(
            out,
            "{}",
            json!({"record": record.index, "trailing": options.hex(trailing)})
        )?;
    }
    Ok(())
}

fn packet_json(
    record: &capture::Record,
    bytes: &[u8],
    options: Options,
    summary: &mut Summary,
) -> Value {
    let hex = |bytes: &[u8]| options.hex(bytes);
    let mut obj = Map::new();
    obj.insert("record".into(), json!(record.index));
    if !record.ts.is_empty() {
        obj.insert("ts".into(), json!(record.ts));
    }
    obj.insert("dir".into(), json!(record.dir.tag()));
    if record.upstream {
        obj.insert("upstream".into(), json!(true));
    }
    if record.injected {
        obj.insert("injected".into(), json!(true));
    }
    let kind = bytes.first().copied().unwrap_or_default();
    obj.insert("type".into(), json!(kind));
    obj.insert("len".into(), json!(bytes.len()));
    let name = PacketType::from_byte(kind).map_or("unknown", PacketType::name);
    let entry = summary
        .types
        .entry((kind, name, record.dir.tag()))
        .or_default();
    entry.packets += 1;
    let packet = match Packet::decode(bytes) {
        Ok(packet) => packet,
        Err(e) => {
            entry.errors += 1;
            summary.errors += 1;
            obj.insert("name".into(), json!(name));
            obj.insert("error".into(), json!(e.to_string()));
            obj.insert("raw".into(), json!(hex(bytes)));
            return Value::Object(obj);
        }
    };
    obj.insert("name".into(), json!(packet.name()));
    if let Some(id) = packet.conn_id() {
        obj.insert("conn_id".into(), json!(id.to_string()));
    }
    if let Some(msg) = packet.msg_id() {
        obj.insert("msg_id".into(), json!(msg.to_string()));
    }
    match packet.body() {
        Some(Body::Frame(frame)) => {
            let ok = frame.checksum_ok();
            if !ok {
                entry.bad_checksums += 1;
            }
            obj.insert("checksum_ok".into(), json!(ok));
            obj.insert(
                "frame".into(),
                json!({
                    "seq": frame.seq,
                    "dir": format!("{:02x}", frame.dir.byte()),
                    "op": format!("{:02x}", frame.opcode),
                    "len": frame.payload.len(),
                    "bound": !frame.is_unbound(),
                    "stuffed": frame.stuffed,
                }),
            );
        }
        Some(Body::Malformed(m)) => {
            entry.errors += 1;
            summary.errors += 1;
            obj.insert("checksum_ok".into(), json!(false));
            let mut reason = format!("inner frame at byte 12: {}", m.error);
            if m.valid_at_13 {
                reason.push_str(" (a valid frame starts at byte 13: 5-byte id layout)");
            }
            obj.insert("error".into(), json!(reason));
        }
        None => {}
    }
    let mut summary_text = packet.summary();
    if let Packet::Hello(h) | Packet::AppHello(h) = &packet {
        summary_text = if options.redact {
            format!("auth code {}", "*".repeat(h.auth.len()))
        } else {
            let code = h.auth.expose();
            match std::str::from_utf8(code) {
                Ok(text) if text.chars().all(|c| c.is_ascii_graphic()) => {
                    format!("auth code {text}")
                }
                _ => format!("auth code (hex) {}", hex(code)),
            }
        };
    }
    if !summary_text.is_empty() {
        obj.insert("detail".into(), json!(summary_text));
    }
    let statuses = packet.statuses();
    if !statuses.is_empty() {
        let list: Vec<Value> = statuses
            .iter()
            .map(|s| {
                json!({
                    "device_id": s.id.0,
                    "on": s.on,
                    "brightness": s.brightness,
                    "temperature": s.temperature,
                    "r": s.rgb[0],
                    "g": s.rgb[1],
                    "b": s.rgb[2],
                    "online": s.online,
                })
            })
            .collect();
        obj.insert("statuses".into(), Value::Array(list));
    }
    if let Packet::TimeReply(reply) = &packet {
        let t = reply.time;
        let offset = t.offset_minutes();
        let sign = if offset < 0 { '-' } else { '+' };
        let local = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
            t.year,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.second,
            offset.abs() / 60,
            offset.abs() % 60
        );
        obj.insert("time".into(), json!({"local": local, "weekday": t.weekday}));
    }
    if let Some(fw) = packet.firmware() {
        let kind = match fw.kind {
            cync_proto::FirmwareKind::Device => "device",
            cync_proto::FirmwareKind::Network => "network",
        };
        obj.insert(
            "firmware".into(),
            json!({"kind": kind, "version": fw.version()}),
        );
    }
    obj.insert("raw".into(), json!(hex(&packet.to_bytes())));
    Value::Object(obj)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[derive(Debug, Default)]
struct Summary {
    records: usize,
    bad_records: usize,
    size_mismatches: usize,
    trailing: usize,
    errors: usize,
    types: BTreeMap<(u8, &'static str, &'static str), TypeCount>,
}

#[derive(Debug, Default)]
struct TypeCount {
    packets: usize,
    errors: usize,
    bad_checksums: usize,
}

impl Summary {
    fn print(&self) {
        let packets: usize = self.types.values().map(|t| t.packets).sum();
        eprintln!(
            "{} records, {packets} packets, {} errors, {} records with trailing bytes, {} unreadable records, {} size mismatches",
            self.records, self.errors, self.trailing, self.bad_records, self.size_mismatches
        );
        eprintln!(
            "{:<6} {:<18} {:<4} {:>8} {:>7} {:>13}",
            "type", "name", "dir", "packets", "errors", "bad_checksum"
        );
        for ((kind, name, dir), c) in &self.types {
            eprintln!(
                "0x{kind:02x}   {name:<18} {dir:<4} {:>8} {:>7} {:>13}",
                c.packets, c.errors, c.bad_checksums
            );
        }
    }
}
