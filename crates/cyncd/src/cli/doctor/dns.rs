//! A DNS A-record lookup over UDP (RFC 1035), enough to ask a given resolver what it answers
//! for the devices' names: one question, recursion desired, answers read with name
//! compression, CNAME chains followed by the resolver. The system resolver cannot be pointed at
//! a chosen server, and it answers from `/etc/hosts`, which the devices never read.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Largest answer read (the classic UDP limit; a longer one is truncated by the resolver).
const MAX_MESSAGE: usize = 512;
/// Questions sent before giving up (UDP loses packets).
const TRIES: u32 = 2;
/// Compression pointers followed in one name before it is called malformed (a loop otherwise).
const MAX_POINTERS: usize = 16;

/// What a resolver answered for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The A records (possibly through CNAMEs).
    Addresses(Vec<Ipv4Addr>),
    /// The name does not exist (NXDOMAIN) or has no A record.
    NoAddress,
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No answer in time.
    #[error("no answer from {0} in time")]
    Timeout(SocketAddr),
    /// A socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The resolver answered with an error code other than NXDOMAIN.
    #[error("the resolver answered with error code {0}")]
    Refused(u8),
    /// The answer could not be read.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The name cannot be asked for.
    #[error("not a DNS name: {0}")]
    BadName(String),
}

/// Asks `resolver` for the A records of `name`, waiting up to `timeout` for each of
/// [`TRIES`] questions.
pub fn lookup_a(resolver: SocketAddr, name: &str, timeout: Duration) -> Result<Lookup, DnsError> {
    let bind: SocketAddr = if resolver.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(resolver)?;
    socket.set_read_timeout(Some(timeout))?;
    for _ in 0..TRIES {
        let id = fastrand::u16(..);
        socket.send(&query(id, name)?)?;
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let answer = buf.get(..n).unwrap_or_default();
                    // A late answer to an earlier question, or noise: keep waiting.
                    if answer.get(..2) != Some(&id.to_be_bytes()[..]) {
                        continue;
                    }
                    return parse_answer(answer);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Err(DnsError::Timeout(resolver))
}

/// A query for the A record of `name` with recursion desired.
pub fn query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    encode_name(name, &mut q)?;
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    Ok(q)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let bad = || DnsError::BadName(name.to_string());
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).map_err(|_| bad())?;
        if len == 0 || len > 63 {
            return Err(bad());
        }
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() > 255 + 12 {
        return Err(bad());
    }
    Ok(())
}

/// Reads the A records of an answer.
pub fn parse_answer(msg: &[u8]) -> Result<Lookup, DnsError> {
    let header: [u8; 12] = msg
        .get(..12)
        .and_then(|h| h.try_into().ok())
        .ok_or(DnsError::Malformed("short header"))?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not an answer"));
    }
    match u8::try_from(flags & 0x000f).unwrap_or(0) {
        0 => {}
        3 => return Ok(Lookup::NoAddress),
        code => return Err(DnsError::Refused(code)),
    }
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)?.saturating_add(4);
    }
    let mut found = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let fixed: [u8; 10] = msg
            .get(at..at.saturating_add(10))
            .and_then(|f| f.try_into().ok())
            .ok_or(DnsError::Malformed("short record"))?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = msg
            .get(at + 10..at + 10 + len)
            .ok_or(DnsError::Malformed("short record data"))?;
        if kind == 1 && class == 1 {
            let octets: [u8; 4] = data
                .try_into()
                .map_err(|_| DnsError::Malformed("an A record is not 4 bytes"))?;
            found.push(Ipv4Addr::from(octets));
        }
        at += 10 + len;
    }
    Ok(if found.is_empty() {
        Lookup::NoAddress
    } else {
        Lookup::Addresses(found)
    })
}

/// The offset just past the name at `at` (labels, or labels ending in a compression pointer).
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DnsError> {
    for _ in 0..=MAX_POINTERS.saturating_mul(8) {
        let len = *msg
            .get(at)
            .ok_or(DnsError::Malformed("name runs past the end"))?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => {
                msg.get(at + 1)
                    .ok_or(DnsError::Malformed("short pointer"))?;
                return Ok(at + 2);
            }
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return Err(DnsError::Malformed("bad label type")),
        }
    }
    Err(DnsError::Malformed("name too long"))
}

/// The first `nameserver` of a resolv.conf text, port 53.
pub fn nameserver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
            .and_then(|ip| ip.split('%').next())
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a resolver sends it: the question, then a CNAME and an A record that point
    /// back to earlier names.
    fn answer(id: u16, rcode: u8, ips: &[[u8; 4]]) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[
            0x81,
            0x80 | rcode,
            0,
            1,
            0,
            u8::try_from(ips.len() + 1).unwrap(),
        ]);
        m.extend_from_slice(&[0, 0, 0, 0]);
        encode_name("cm.gelighting.com", &mut m).unwrap();
        m.extend_from_slice(&[0, 1, 0, 1]);
        // CNAME cm.gelighting.com → x.cm.gelighting.com (a label, then a pointer to offset 12)
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0xc0, 12]);
        for ip in ips {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            m.extend_from_slice(ip);
        }
        m
    }

    #[test]
    fn answers_are_read_through_compression_and_cnames() {
        let a = parse_answer(&answer(7, 0, &[[192, 168, 1, 5], [10, 0, 0, 2]])).unwrap();
        assert_eq!(
            a,
            Lookup::Addresses(vec![
                Ipv4Addr::new(192, 168, 1, 5),
                Ipv4Addr::new(10, 0, 0, 2)
            ])
        );
        assert_eq!(parse_answer(&answer(7, 3, &[])).unwrap(), Lookup::NoAddress);
        assert_eq!(parse_answer(&answer(7, 0, &[])).unwrap(), Lookup::NoAddress);
        assert!(matches!(
            parse_answer(&answer(7, 2, &[])),
            Err(DnsError::Refused(2))
        ));
    }

    #[test]
    fn truncated_or_hostile_answers_are_errors_not_panics() {
        let full = answer(7, 0, &[[192, 168, 1, 5]]);
        for n in 0..full.len() {
            let _ = parse_answer(&full[..n]);
        }
        // A pointer loop only costs the bounded walk.
        let mut looped = full.clone();
        looped[12] = 0xc0;
        looped[13] = 12;
        let _ = parse_answer(&looped);
        for seed in 0..2000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut m = full.clone();
            for _ in 0..4 {
                let i = rng.usize(..m.len());
                m[i] = rng.u8(..);
            }
            let _ = parse_answer(&m);
        }
    }

    #[test]
    fn queries_are_well_formed() {
        let q = query(0x1234, "cm-sec.gelighting.com.").unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..19], b"\x06cm-sec");
        assert_eq!(&q[q.len() - 4..], &[0, 1, 0, 1]);
        assert!(query(1, "a..b").is_err());
        assert!(query(1, &"x".repeat(64)).is_err());
    }

    #[test]
    fn the_first_nameserver_is_the_resolver() {
        let conf = "# generated\nsearch lan\nnameserver 192.168.1.1\nnameserver 1.1.1.1\n";
        assert_eq!(nameserver(conf), Some("192.168.1.1:53".parse().unwrap()));
        assert_eq!(
            nameserver("nameserver fe80::1%eth0\n").map(|s| s.port()),
            Some(53)
        );
        assert_eq!(nameserver("search lan\n"), None);
    }
}
