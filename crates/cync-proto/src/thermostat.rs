//! The sensor report of a Cync thermostat (type 224): `sensorsData:` followed by a JSON array
//! with one object per temperature sensor, which the thermostat sends as a 0x43 entry and in its
//! 0xAB answer instead of status records.
//!
//! ```text
//! 0x43: 43 00 00 02 67 | 00 00 0d 80 | 01 01 06 | 57 92 5d | "sensorsData:[{…},…]" (605 bytes)
//!                                                  tag  flags 9, length 0x25d
//! 0xAB: ab 00 00 01 49 | 49 96 02 d2 | "sensorsData:[{…},…]"          (no message id)
//! ```
//! Both from Kinachi249/pycync `tests/test_packet_parser.py` (`test_thermostat_sync_packet`,
//! `test_probe_packet`). An object looks like
//! `{"Type":"savant sensor","PinCode":5324,"Temperature":"75.7F","Humidity":48,"Active":false,"Batt":"2.87"}`;
//! an empty slot is `{"Type":"None","Temperature":null,…}`. The meaning of the fields is read
//! from their names and values (inferred): the thermostat's own sensor is `"internal"`, remote
//! sensors carry a pairing code and a battery voltage, `Active` marks the sensor the
//! thermostat currently follows.
//!
//! The parser reads exactly this shape — a name, a colon, an array of flat objects whose values
//! are strings, numbers, booleans or null — and nothing more general. It is bounded (at most
//! [`MAX_SENSORS`] objects of [`MAX_FIELDS`] fields, strings of [`MAX_TEXT`] bytes), keeps the
//! fields in order with unknown ones included, and never panics on input.

use std::fmt::Write as _;
use thiserror::Error;

/// Most sensor objects read from one report (the thermostat sends 7 slots).
pub const MAX_SENSORS: usize = 32;
/// Most fields read per sensor object (6 seen).
pub const MAX_FIELDS: usize = 16;
/// Longest string or number text, in bytes (13 seen).
pub const MAX_TEXT: usize = 128;
/// Longest report name before the colon (`sensorsData` = 11).
pub const MAX_NAME: usize = 32;

/// A parsed sensor report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorReport {
    /// The name before the colon (`sensorsData`).
    pub name: String,
    /// One entry per object of the array, in order (empty slots included).
    pub sensors: Vec<Sensor>,
}

/// One sensor object: its fields in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sensor {
    /// Key and value of every field.
    pub fields: Vec<(String, SensorValue)>,
}

/// A field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorValue {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A JSON number, as its text (`48`, `-3.5e2`).
    Number(String),
    /// A string, unescaped.
    Text(String),
}

/// A temperature as the thermostat writes it (`"75.9F"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temperature {
    /// Tenths of a degree (759 for 75.9); further decimals are cut off.
    pub tenths: i32,
    /// The unit letter.
    pub unit: TemperatureUnit,
}

/// The unit letter of a [`Temperature`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemperatureUnit {
    /// `F`.
    Fahrenheit,
    /// `C`.
    Celsius,
}

/// Why bytes are not a sensor report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SensorError {
    /// No `name:` before the array (status records, or other text).
    #[error("no `name:` prefix")]
    NoName,
    /// The JSON does not have the expected shape.
    #[error("expected {expected} at byte {at}")]
    Syntax {
        /// Offset into the bytes given.
        at: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// A value is an object or array; sensor fields are scalars.
    #[error("nested value at byte {0}")]
    Nested(usize),
    /// A bound was exceeded.
    #[error("more than {max} {what}")]
    TooMany {
        /// What overflowed (`sensors`, `fields`, `bytes of text`).
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// Bytes other than whitespace or NUL padding follow the array.
    #[error("{0} unexpected bytes after the array")]
    Trailing(usize),
}

impl SensorReport {
    /// Reads `name:[{…},…]`. Whitespace (and NUL padding at the end) is allowed around the
    /// JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self, SensorError> {
        let colon = bytes
            .iter()
            .take(MAX_NAME + 1)
            .position(|b| *b == b':')
            .ok_or(SensorError::NoName)?;
        let name = bytes.get(..colon).ok_or(SensorError::NoName)?;
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            return Err(SensorError::NoName);
        }
        let mut p = Parser {
            bytes,
            at: colon + 1,
        };
        let sensors = p.array()?;
        let rest = bytes.get(p.at..).unwrap_or_default();
        let junk = rest
            .iter()
            .filter(|b| !b.is_ascii_whitespace() && **b != 0)
            .count();
        if junk > 0 {
            return Err(SensorError::Trailing(junk));
        }
        Ok(Self {
            name: String::from_utf8_lossy(name).into_owned(),
            sensors,
        })
    }

    /// The sensors that are fitted (whose `Type` is not `"None"`).
    pub fn present(&self) -> impl Iterator<Item = &Sensor> {
        self.sensors.iter().filter(|s| s.present())
    }

    /// The compact JSON form, `name:[{"k":v,…},…]`, as the thermostat writes it. A hand-built
    /// [`SensorValue::Number`] is written as given, so it must be valid JSON number text.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64 * self.sensors.len() + self.name.len() + 3);
        out.push_str(&self.name);
        out.push_str(":[");
        for (i, s) in self.sensors.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('{');
            for (j, (key, value)) in s.fields.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                write_string(&mut out, key);
                out.push(':');
                match value {
                    SensorValue::Null => out.push_str("null"),
                    SensorValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                    SensorValue::Number(n) => out.push_str(n),
                    SensorValue::Text(t) => write_string(&mut out, t),
                }
            }
            out.push('}');
        }
        out.push(']');
        out.into_bytes()
    }
}

impl Sensor {
    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<&SensorValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `Type`: `"internal"`, `"savant sensor"`, or `"None"` for an empty slot.
    pub fn kind(&self) -> Option<&str> {
        match self.get("Type")? {
            SensorValue::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Whether the slot holds a sensor (its `Type` is present and not `"None"`).
    pub fn present(&self) -> bool {
        self.kind().is_some_and(|k| k != "None")
    }

    /// `Temperature`, e.g. `"75.9F"`.
    pub fn temperature(&self) -> Option<Temperature> {
        match self.get("Temperature")? {
            SensorValue::Text(t) => Temperature::parse(t),
            _ => None,
        }
    }

    /// `Humidity` in percent (0–100).
    pub fn humidity(&self) -> Option<u8> {
        match self.get("Humidity")? {
            SensorValue::Number(n) => n.parse::<u8>().ok().filter(|h| *h <= 100),
            _ => None,
        }
    }

    /// `Active`.
    pub fn active(&self) -> Option<bool> {
        match self.get("Active")? {
            SensorValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// `Batt` as millivolts (`"2.87"` → 2870).
    pub fn battery_millivolts(&self) -> Option<u32> {
        let text = match self.get("Batt")? {
            SensorValue::Text(t) | SensorValue::Number(t) => t,
            _ => return None,
        };
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        let whole: u32 = whole.parse().ok()?;
        let mut milli = 0u32;
        let mut scale = 100u32;
        for d in frac.chars() {
            let digit = d.to_digit(10)?;
            milli += digit * scale;
            scale /= 10;
        }
        whole.checked_mul(1000)?.checked_add(milli)
    }

    /// `PinCode`, the remote sensor's pairing code.
    pub fn pin_code(&self) -> Option<u32> {
        match self.get("PinCode")? {
            SensorValue::Number(n) => n.parse().ok(),
            _ => None,
        }
    }
}

impl Temperature {
    /// Reads `-?digits(.digits)?` followed by `F` or `C`.
    pub fn parse(text: &str) -> Option<Self> {
        let (number, unit) = match text.strip_suffix(['F', 'f']) {
            Some(n) => (n, TemperatureUnit::Fahrenheit),
            None => (text.strip_suffix(['C', 'c'])?, TemperatureUnit::Celsius),
        };
        let (negative, digits) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, "0"));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let whole: i32 = whole.parse().ok()?;
        let tenth = frac.bytes().next().map_or(0, |b| i32::from(b - b'0'));
        let tenths = whole.checked_mul(10)?.checked_add(tenth)?;
        Some(Self {
            tenths: if negative { -tenths } else { tenths },
            unit,
        })
    }
}

/// A cursor over the bytes, always at a valid offset or the end.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while self
            .peek()
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn syntax(&self, expected: &'static str) -> SensorError {
        SensorError::Syntax {
            at: self.at,
            expected,
        }
    }

    fn eat(&mut self, byte: u8, expected: &'static str) -> Result<(), SensorError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.syntax(expected))
        }
    }

    /// `[` object (`,` object)* `]`, or `[]`.
    fn array(&mut self) -> Result<Vec<Sensor>, SensorError> {
        self.eat(b'[', "`[`")?;
        let mut out = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(out);
        }
        loop {
            if out.len() >= MAX_SENSORS {
                return Err(SensorError::TooMany {
                    what: "sensors",
                    max: MAX_SENSORS,
                });
            }
            out.push(self.object()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(out);
                }
                _ => return Err(self.syntax("`,` or `]`")),
            }
        }
    }

    /// `{` string `:` scalar (`,` …)* `}`, or `{}`.
    fn object(&mut self) -> Result<Sensor, SensorError> {
        self.eat(b'{', "`{`")?;
        let mut fields = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Sensor { fields });
        }
        loop {
            if fields.len() >= MAX_FIELDS {
                return Err(SensorError::TooMany {
                    what: "fields",
                    max: MAX_FIELDS,
                });
            }
            self.skip_ws();
            let key = self.string()?;
            self.eat(b':', "`:`")?;
            let value = self.scalar()?;
            fields.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Sensor { fields });
                }
                _ => return Err(self.syntax("`,` or `}`")),
            }
        }
    }

    fn scalar(&mut self) -> Result<SensorValue, SensorError> {
        self.skip_ws();
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        for (word, value) in [
            (&b"null"[..], SensorValue::Null),
            (b"true", SensorValue::Bool(true)),
            (b"false", SensorValue::Bool(false)),
        ] {
            if rest.starts_with(word) {
                self.at += word.len();
                return Ok(value);
            }
        }
        match self.peek() {
            Some(b'"') => self.string().map(SensorValue::Text),
            Some(b'-' | b'0'..=b'9') => self.number().map(SensorValue::Number),
            Some(b'{' | b'[') => Err(SensorError::Nested(self.at)),
            _ => Err(self.syntax("a value")),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, kept as text.
    fn number(&mut self) -> Result<String, SensorError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.syntax("a digit"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.syntax("a digit"));
            }
            self.digits();
        }
        let text = self.bytes.get(start..self.at).unwrap_or_default();
        if text.len() > MAX_TEXT {
            return Err(SensorError::TooMany {
                what: "bytes of text",
                max: MAX_TEXT,
            });
        }
        Ok(String::from_utf8_lossy(text).into_owned())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// A JSON string with its escapes (`\uXXXX` outside the surrogates only).
    fn string(&mut self) -> Result<String, SensorError> {
        if self.peek() != Some(b'"') {
            return Err(self.syntax("`\"`"));
        }
        self.at += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            if out.len() > MAX_TEXT {
                return Err(SensorError::TooMany {
                    what: "bytes of text",
                    max: MAX_TEXT,
                });
            }
            let Some(b) = self.peek() else {
                return Err(self.syntax("`\"`"));
            };
            self.at += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.syntax("an escape"));
                    };
                    self.at += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return Err(self.syntax("an escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.syntax("no control character")),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.syntax("UTF-8 text"))
    }

    fn unicode(&mut self) -> Result<char, SensorError> {
        let hex = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.syntax("4 hex digits"))?;
        self.at += 4;
        char::from_u32(hex).ok_or_else(|| self.syntax("a character outside the surrogates"))
    }
}

fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of pycync's `test_thermostat_sync_packet` (0x43 bytes 15…).
    const THERMOSTAT_JSON: &str = concat!(
        r#"sensorsData:[{"Type":"internal","Temperature":"75.9F","Humidity":50,"Active":true},"#,
        r#"{"Type":"savant sensor","PinCode":5324,"Temperature":"75.7F","Humidity":48,"Active":false,"Batt":"2.87"},"#,
        r#"{"Type":"savant sensor","PinCode":5140,"Temperature":"75.2F","Humidity":50,"Active":false,"Batt":"2.90"},"#,
        r#"{"Type":"None","Temperature":null,"Humidity":null,"Active":false,"Batt":null},"#,
        r#"{"Type":"None","Temperature":null,"Humidity":null,"Active":false,"Batt":null},"#,
        r#"{"Type":"None","Temperature":null,"Humidity":null,"Active":false,"Batt":null},"#,
        r#"{"Type":"None","Temperature":null,"Humidity":null,"Active":false,"Batt":null}]"#
    );

    #[test]
    fn thermostat_report_reads_as_sensors() {
        assert_eq!(THERMOSTAT_JSON.len(), 605);
        let r = SensorReport::parse(THERMOSTAT_JSON.as_bytes()).unwrap();
        assert_eq!(r.name, "sensorsData");
        assert_eq!(r.sensors.len(), 7);
        let present: Vec<&Sensor> = r.present().collect();
        assert_eq!(present.len(), 3);
        let internal = present[0];
        assert_eq!(internal.kind(), Some("internal"));
        assert_eq!(
            internal.temperature(),
            Some(Temperature {
                tenths: 759,
                unit: TemperatureUnit::Fahrenheit
            })
        );
        assert_eq!(
            (
                internal.humidity(),
                internal.active(),
                internal.battery_millivolts()
            ),
            (Some(50), Some(true), None)
        );
        let remote = present[1];
        assert_eq!(remote.kind(), Some("savant sensor"));
        assert_eq!(
            (
                remote.pin_code(),
                remote.temperature().map(|t| t.tenths),
                remote.humidity(),
                remote.active(),
                remote.battery_millivolts()
            ),
            (Some(5324), Some(757), Some(48), Some(false), Some(2870))
        );
        assert_eq!(present[2].battery_millivolts(), Some(2900));
        let empty = &r.sensors[3];
        assert!(!empty.present());
        assert_eq!(empty.get("Temperature"), Some(&SensorValue::Null));
        assert_eq!(empty.temperature(), None);
        // The compact form is the thermostat's own.
        assert_eq!(r.to_bytes(), THERMOSTAT_JSON.as_bytes());
    }

    #[test]
    fn temperatures() {
        let t = |s| Temperature::parse(s).map(|t| (t.tenths, t.unit));
        assert_eq!(t("21C"), Some((210, TemperatureUnit::Celsius)));
        assert_eq!(t("-3.25F"), Some((-32, TemperatureUnit::Fahrenheit)));
        assert_eq!(t("75.F"), None);
        assert_eq!(t("F"), None);
        assert_eq!(t("75.9K"), None);
        assert_eq!(t("99999999999F"), None);
    }

    #[test]
    fn what_is_not_a_report() {
        let err = |s: &[u8]| SensorReport::parse(s).unwrap_err();
        // A status record is not text with a name.
        assert_eq!(err(&[0x06, 0x01, 0x02, 0, 0, 0, 0]), SensorError::NoName);
        assert_eq!(err(b":[]"), SensorError::NoName);
        assert_eq!(err(b"a b:[]"), SensorError::NoName);
        assert!(matches!(err(b"x:["), SensorError::Syntax { .. }));
        assert!(matches!(err(b"x:[{\"a\":1,}]"), SensorError::Syntax { .. }));
        assert!(matches!(err(b"x:[{\"a\":01}]"), SensorError::Syntax { .. }));
        assert!(matches!(
            err(b"x:[{\"a\":\"\\ud800\"}]"),
            SensorError::Syntax { .. }
        ));
        assert_eq!(err(b"x:[{\"a\":{}}]"), SensorError::Nested(8));
        assert_eq!(err(b"x:[] junk"), SensorError::Trailing(4));
        let many = format!("x:[{}{{}}]", "{},".repeat(MAX_SENSORS));
        assert_eq!(
            err(many.as_bytes()),
            SensorError::TooMany {
                what: "sensors",
                max: MAX_SENSORS
            }
        );
        let long = format!("x:[{{\"a\":\"{}\"}}]", "y".repeat(MAX_TEXT + 2));
        assert!(matches!(err(long.as_bytes()), SensorError::TooMany { .. }));
        // Padding after the array is fine.
        assert!(SensorReport::parse(b"x: [ { } ] \0\0").is_ok());
    }

    #[test]
    fn escapes_round_trip() {
        let r = SensorReport {
            name: "n".into(),
            sensors: vec![Sensor {
                fields: vec![
                    ("q\"b\\".into(), SensorValue::Text("tab\there\u{1}é".into())),
                    ("n".into(), SensorValue::Number("-1.5e3".into())),
                ],
            }],
        };
        assert_eq!(SensorReport::parse(&r.to_bytes()).unwrap(), r);
        let parsed = SensorReport::parse(br#"n:[{"a":"\u00e9\/\n"}]"#).unwrap();
        assert_eq!(
            parsed.sensors[0].get("a"),
            Some(&SensorValue::Text("é/\n".into()))
        );
    }
}
