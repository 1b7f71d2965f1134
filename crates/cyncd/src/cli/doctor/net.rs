//! This host's IPv4 addresses, read from Linux's `/proc/net/fib_trie` (the kernel's local
//! routing table: every address assigned to an interface is a `/32 host LOCAL` entry), with no
//! system call beyond reading a file. Devices resolve A records only, so IPv6 does not matter
//! here. Elsewhere the list is empty and `cyncd doctor --address` names the host's address.

use std::net::Ipv4Addr;

/// The IPv4 addresses of this host's interfaces, loopback excluded, sorted and without
/// duplicates (each appears in the main and the local table).
pub fn local_ipv4() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/proc/net/fib_trie")
        .map(|text| parse_fib_trie(&text))
        .unwrap_or_default()
}

/// The `|-- a.b.c.d` entries followed by a `/32 host LOCAL` line, loopback excluded.
pub fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(ip) = line.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback()) {
                found.push(ip);
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_come_from_the_local_table() {
        let text = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.168.1.0/24 2 0 2
        |-- 192.168.1.0
           /24 link UNICAST
        |-- 192.168.1.23
           /32 host LOCAL
        |-- 192.168.1.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 192.168.1.0/24 2 0 2
        |-- 192.168.1.23
           /32 host LOCAL
     |-- 10.8.0.1
        /32 host LOCAL
";
        assert_eq!(
            parse_fib_trie(text),
            vec![Ipv4Addr::new(10, 8, 0, 1), Ipv4Addr::new(192, 168, 1, 23)]
        );
        assert!(parse_fib_trie("").is_empty());
    }
}
