//! Reader and writer of the text capture format of recorded device traffic.
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
//!
//! cyncd writes the same format ([`Record::write_to`]), one file per connection, with these
//! additions (a reader that does not know them skips the comments and ignores the words):
//! - lines that start with `#` are comments; cyncd's files begin with one naming the connection
//!   ([`FileHeader`]), so a reader knows every record of the file belongs to one connection and
//!   that a packet may continue from one record of a direction to its next;
//! - `[UPSTREAM]`: the record travelled between cyncd and the cloud (relay mode): `DEV→CLOUD
//!   [UPSTREAM]` from cyncd to the cloud, `CLOUD→DEV [UPSTREAM]` from the cloud to cyncd. Without
//!   it, between the device and cyncd (or the cloud, in a proxy's capture);
//! - `[MASKED]`: a hello's auth code in this record was replaced by `*` bytes (0x2a), the same
//!   number of them, so the packet still decodes ([`Cursor`] does the masking);
//! - `[GAP]`: records of this connection were lost before this one (not written).

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

    /// The arrow of a record header: `DEV→CLOUD` or `CLOUD→DEV`.
    pub fn arrow(self) -> &'static str {
        match self {
            Self::Device => "DEV→CLOUD",
            Self::Server => "CLOUD→DEV",
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
    /// Sent by the capturing proxy, not the cloud (`[INJECTED]`).
    pub injected: bool,
    /// Between cyncd and the cloud, in relay mode (`[UPSTREAM]`).
    pub upstream: bool,
    /// A hello's auth code in it was masked (`[MASKED]`).
    pub masked: bool,
    /// Records of the same connection were lost before this one (`[GAP]`).
    pub gap: bool,
    /// The byte count in the header, when present.
    pub declared: Option<usize>,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Record {
    /// A record of `bytes` sent by `dir` at `ts`, without marks.
    pub fn new(ts: impl Into<String>, dir: Direction, bytes: Vec<u8>) -> Self {
        Self {
            index: 0,
            ts: ts.into(),
            dir,
            injected: false,
            upstream: false,
            masked: false,
            gap: false,
            declared: Some(bytes.len()),
            bytes,
        }
    }

    /// Appends the record as text: its header line, its line of hex bytes and a blank line.
    /// [`parse`] reads it back to the same record (its `index` aside).
    pub fn write_to(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str(&self.ts);
        out.push(' ');
        out.push_str(self.dir.arrow());
        for (on, mark) in [
            (self.injected, " [INJECTED]"),
            (self.upstream, " [UPSTREAM]"),
            (self.masked, " [MASKED]"),
            (self.gap, " [GAP]"),
        ] {
            if on {
                out.push_str(mark);
            }
        }
        let _ = writeln!(out, " ({} bytes)", self.bytes.len());
        out.reserve(self.bytes.len() * 3 + 2);
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{b:02x}");
        }
        out.push_str("\n\n");
    }
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

/// Reads every record of a capture file, in order (comment lines are skipped).
pub fn parse(text: &str) -> Vec<Result<Record, RecordError>> {
    let mut out = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
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
            Some(h) => match lines.next() {
                None => Err(error("header without a line of bytes".into())),
                Some((_, hex)) => match parse_hex(hex) {
                    Some(bytes) => Ok(Record {
                        index,
                        ts: h.ts.to_string(),
                        dir: h.dir,
                        injected: h.marks.contains(&"[INJECTED]"),
                        upstream: h.marks.contains(&"[UPSTREAM]"),
                        masked: h.marks.contains(&"[MASKED]"),
                        gap: h.marks.contains(&"[GAP]"),
                        declared: h.declared,
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

struct Header<'a> {
    ts: &'a str,
    dir: Direction,
    marks: Vec<&'a str>,
    declared: Option<usize>,
}

fn parse_header(line: &str) -> Option<Header<'_>> {
    let mut words = line.split_whitespace();
    let ts = words.next()?;
    let dir = match words.next()? {
        "DEV→CLOUD" | "DEV->CLOUD" => Direction::Device,
        "CLOUD→DEV" | "CLOUD->DEV" => Direction::Server,
        _ => return None,
    };
    let rest: Vec<&str> = words.collect();
    let declared = rest
        .iter()
        .position(|w| w.starts_with("bytes"))
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| rest.get(i))
        .and_then(|w| w.trim_start_matches('(').parse().ok());
    let marks = rest
        .into_iter()
        .filter(|w| w.starts_with('[') && w.ends_with(']'))
        .collect();
    Some(Header {
        ts,
        dir,
        marks,
        declared,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// The first line of a file cyncd wrote: `# cyncd capture: connection <key>, peer <addr>, part
/// <n>`. Every record of such a file belongs to the one connection named by `connection` (the
/// same in each of its parts, which a size limit started one after the other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Names the connection: its opening time and peer.
    pub connection: String,
    /// The device's address and port.
    pub peer: String,
    /// 1 for the connection's first file, then 2, 3…
    pub part: u32,
}

/// How a [`FileHeader`] line starts.
pub const FILE_HEADER: &str = "# cyncd capture:";

impl FileHeader {
    /// The header line, with its newline.
    pub fn line(&self) -> String {
        format!(
            "{FILE_HEADER} connection {}, peer {}, part {}\n",
            self.connection, self.peer, self.part
        )
    }

    /// Reads the header of a capture's text: its first non-empty line, when it is one.
    pub fn of(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| !l.trim().is_empty())?;
        let rest = line.strip_prefix(FILE_HEADER)?;
        let mut header = Self {
            connection: String::new(),
            peer: String::new(),
            part: 1,
        };
        for field in rest.split(',') {
            let mut words = field.split_whitespace();
            match (words.next(), words.next()) {
                (Some("connection"), Some(v)) => header.connection = v.to_string(),
                (Some("peer"), Some(v)) => header.peer = v.to_string(),
                (Some("part"), Some(v)) => header.part = v.parse().ok()?,
                _ => {}
            }
        }
        (!header.connection.is_empty()).then_some(header)
    }
}

/// Follows one direction of a connection through its reads, by the header length rule
/// (`5 + byte[3] * 256 + byte[4]` bytes a packet): knows whether a read ended on a packet
/// boundary, and masks the auth code of every 0x23/0x13 hello (bytes `12..12 + len`, `len` at
/// `[10:12]`) by writing `*` over it, whichever reads the hello is split over. It holds 24 bytes
/// of state and steps over the body of every other packet without looking at it.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// Bytes of the current packet seen so far (0: at a boundary).
    pos: usize,
    /// The current packet's size, once its header is in.
    len: usize,
    /// End of the current hello's auth code (0: not a hello).
    code_end: usize,
    /// The current packet's first 12 bytes.
    head: [u8; 12],
}

impl Cursor {
    /// Whether the bytes so far end on a packet boundary.
    pub fn at_boundary(&self) -> bool {
        self.pos == 0
    }

    /// Moves over the next bytes of the stream; with `mask`, overwrites every auth-code byte
    /// with `*`. Returns whether it masked any.
    pub fn advance(&mut self, bytes: &mut [u8], mask: bool) -> bool {
        let mut masked = false;
        let mut i = 0;
        while i < bytes.len() {
            if self.pos < self.head.len() {
                let Some(&b) = bytes.get(i) else { break };
                if let Some(slot) = self.head.get_mut(self.pos) {
                    *slot = b;
                }
                if self.pos == 4 {
                    let [_, _, _, hi, lo, ..] = self.head;
                    self.len = 5 + usize::from(hi) * 256 + usize::from(lo);
                    self.code_end = 0;
                }
                let [kind, _, _, _, _, _, _, _, _, _, hi, lo] = self.head;
                if self.pos == 11 && matches!(kind, 0x23 | 0x13) {
                    let code = usize::from(u16::from_be_bytes([hi, lo]));
                    self.code_end = (12 + code).min(self.len);
                }
                self.pos += 1;
                i += 1;
            } else {
                let end = if self.pos < self.code_end {
                    self.code_end
                } else {
                    self.len
                };
                let n = (end - self.pos).min(bytes.len() - i);
                if self.pos < self.code_end && mask {
                    if let Some(code) = bytes.get_mut(i..i + n) {
                        code.fill(b'*');
                        masked |= n > 0;
                    }
                }
                self.pos += n;
                i += n;
            }
            if self.pos >= 5 && self.pos >= self.len {
                self.pos = 0;
            }
        }
        masked
    }
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

    const HELLO: &str = "23 00 00 00 1a 03 38 e8 cf 46 00 10 31 65 30 37 64 38 63 65 30 61 36 31 37 61 33 37 00 00 3c";

    fn hex(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    #[test]
    fn written_records_read_back_with_their_marks() {
        let mut text = FileHeader {
            connection: "20261201T184000.123456Z-127.0.0.1_40312".into(),
            peer: "127.0.0.1:40312".into(),
            part: 2,
        }
        .line();
        let mut first = Record::new("2026-12-01T18:40:00.123456", Direction::Device, hex(HELLO));
        first.masked = true;
        first.write_to(&mut text);
        text.push_str("# bridge 38e8cf46\n");
        let mut second = Record::new(
            "2026-12-01T18:40:00.200000",
            Direction::Server,
            hex("28 00 00 00 02 00 00"),
        );
        second.upstream = true;
        second.gap = true;
        second.write_to(&mut text);
        assert!(
            text.contains("DEV→CLOUD [MASKED] (31 bytes)\n23 00 00 00 1a"),
            "{text}"
        );
        let records: Vec<Record> = parse(&text).into_iter().map(Result::unwrap).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], first);
        second.index = 1;
        assert_eq!(records[1], second);
        let header = FileHeader::of(&text).unwrap();
        assert_eq!((header.part, header.peer.as_str()), (2, "127.0.0.1:40312"));
        assert!(FileHeader::of("2025-11-06T08:20:40 DEV→CLOUD (1 bytes)\n00\n").is_none());
    }

    #[test]
    fn the_cursor_masks_a_hello_split_anywhere_and_finds_boundaries() {
        // A heartbeat, a hello, a 0x43 ping, then a second hello (0x13, the app's).
        let mut stream = hex("d3 00 00 00 00");
        stream.extend(hex(HELLO));
        stream.extend(hex("43 00 00 00 07 38 e8 cf 46 01 01 06"));
        let mut app = hex(HELLO);
        app[0] = 0x13;
        stream.extend(&app);
        let mut expected = stream.clone();
        for at in [5 + 12..5 + 28, 5 + 31 + 12 + 12..5 + 31 + 12 + 28] {
            expected[at].fill(b'*');
        }
        let ends = [5, 36, 48, 79];
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut bytes = stream.clone();
                let mut cursor = Cursor::default();
                let (x, rest) = bytes.split_at_mut(a);
                let (y, z) = rest.split_at_mut(b - a);
                let mut masked = false;
                for (part, end) in [(x, a), (y, b), (z, stream.len())] {
                    masked |= cursor.advance(part, true);
                    assert_eq!(
                        cursor.at_boundary(),
                        end == 0 || ends.contains(&end),
                        "{a} {b} {end}"
                    );
                }
                assert!(masked);
                assert_eq!(bytes, expected, "split at {a} and {b}");
            }
        }
        // Without masking, nothing changes.
        let mut bytes = stream.clone();
        assert!(!Cursor::default().advance(&mut bytes, false));
        assert_eq!(bytes, stream);
    }
}
