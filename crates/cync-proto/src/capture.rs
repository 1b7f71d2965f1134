//! Reader for the text capture format of recorded device traffic.
//!
//! ```text
//! 2025-11-06T08:20:40.005881 DEV→CLOUD (31 bytes)
//! 23 00 00 00 1a 03 38 e8 cf 46 00 10 …
//! <blank line>
//! ```
//! One record is one TCP read (up to 4,096 bytes), not one packet: it may hold several packets,
//! or part of one. `CLOUD→DEV [INJECTED]` marks bytes a capturing proxy sent itself. The reader
//! is pure (it takes the text); a record it cannot read is returned as an error and reading
//! goes on with the next one.

/// Who sent a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Device to server (`DEV→CLOUD`).
    Device,
    /// Server to device (`CLOUD→DEV`).
    Server,
}

impl Direction {
    /// `dev` or `srv`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Device => "dev",
            Self::Server => "srv",
        }
    }
}

/// One record: one TCP read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 0-based position in the file.
    pub index: usize,
    /// The timestamp as written (UTC, ISO 8601).
    pub ts: String,
    /// Who sent it.
    pub dir: Direction,
    /// Sent by the capturing proxy, not the cloud.
    pub injected: bool,
    /// The byte count in the header, when present.
    pub declared: Option<usize>,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// 0-based position in the file.
    pub index: usize,
    /// 1-based line of the header.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Reads every record of a capture file, in order.
pub fn parse(text: &str) -> Vec<Result<Record, RecordError>> {
    let mut out = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    while let Some((n, header)) = lines.next() {
        let index = out.len();
        let error = |reason: String| RecordError {
            index,
            line: n + 1,
            reason,
        };
        let record = match parse_header(header) {
            None => Err(error(format!(
                "not a record header: {:?}",
                truncate(header)
            ))),
            Some((ts, dir, injected, declared)) => match lines.next() {
                None => Err(error("header without a line of bytes".into())),
                Some((_, hex)) => match parse_hex(hex) {
                    Some(bytes) => Ok(Record {
                        index,
                        ts: ts.to_string(),
                        dir,
                        injected,
                        declared,
                        bytes,
                    }),
                    None => Err(error(format!("bad hex line: {:?}", truncate(hex)))),
                },
            },
        };
        out.push(record);
    }
    out
}

/// Space-separated hex pairs (or one unbroken run of hex digits) to bytes.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn parse_header(line: &str) -> Option<(&str, Direction, bool, Option<usize>)> {
    let mut words = line.split_whitespace();
    let ts = words.next()?;
    let dir = match words.next()? {
        "DEV→CLOUD" | "DEV->CLOUD" => Direction::Device,
        "CLOUD→DEV" | "CLOUD->DEV" => Direction::Server,
        _ => return None,
    };
    let rest: Vec<&str> = words.collect();
    let injected = rest.contains(&"[INJECTED]");
    let declared = rest
        .iter()
        .position(|w| w.starts_with("bytes"))
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| rest.get(i))
        .and_then(|w| w.trim_start_matches('(').parse().ok());
    Some((ts, dir, injected, declared))
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_reports_bad_ones() {
        let text = "2025-11-06T08:20:40.005881 DEV→CLOUD (5 bytes)\nd3 00 00 00 00\n\n\
                    2025-11-06T08:58:12.350746 CLOUD→DEV [INJECTED] (2 bytes)\nd8 0\n\n\
                    garbage line\n\
                    2025-11-06T08:20:41 CLOUD->DEV (5 bytes)\nd8 00 00 00 00\n";
        let records = parse(text);
        assert_eq!(records.len(), 4);
        let first = records[0].as_ref().unwrap();
        assert_eq!(
            (first.dir, first.injected, first.declared),
            (Direction::Device, false, Some(5))
        );
        assert_eq!(first.bytes, [0xd3, 0, 0, 0, 0]);
        assert!(records[1].as_ref().unwrap_err().reason.contains("bad hex"));
        assert!(
            records[2]
                .as_ref()
                .unwrap_err()
                .reason
                .contains("not a record header")
        );
        assert_eq!(records[3].as_ref().unwrap().dir, Direction::Server);
    }
}
