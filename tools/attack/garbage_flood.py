#!/usr/bin/env python3
"""Log flood: one connection sends 4 KiB packets with a reserved header byte for --seconds (5).

Each such packet is undecodable; the server counts it and (before rate limits) wrote a
warning line with the packet's whole hex. Reports bytes sent, log bytes written meanwhile, the
amplification (log bytes per byte in), and the server's CPU over the flood (1.0 = one core).

Usage: python3 tools/attack/garbage_flood.py --cyncd target/release/cyncd [--seconds 5]
"""

import time

import common as c


def main():
    ap = c.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    server = c.Server(args.cyncd, extra=["--no-discover-mesh"])
    result = {"binary": args.cyncd}
    try:
        s = c.tls_connect(server.devices)
        s.sendall(c.hello(0x67000000, b"0123456789abcdef"))
        assert c.read_exact(s, 7) == bytes.fromhex("28 00 00 00 02 00 00")
        bad = bytes([0x43, 0x01, 0x00, 0x0F, 0xFB]) + b"\xa5" * 4091
        batch = bad * 16
        log0, cpu0, t0 = server.log_bytes(), server.cpu_seconds(), time.monotonic()
        sent = 0
        while time.monotonic() - t0 < args.seconds:
            s.sendall(batch)
            sent += len(batch)
        # A heartbeat answered: everything before it was read.
        s.sendall(bytes.fromhex("d3 00 00 00 00"))
        c.read_exact(s, 5, seconds=60)
        elapsed = time.monotonic() - t0
        time.sleep(0.2)
        logged = server.log_bytes() - log0
        result.update({
            "seconds": round(elapsed, 2),
            "bytes_in": sent,
            "log_bytes": logged,
            "log_bytes_per_byte_in": float(f"{logged / sent:.3g}"),
            "server_cpu_cores": round((server.cpu_seconds() - cpu0) / elapsed, 2),
        })
        s.close()
    finally:
        server.stop()
    c.emit(result)


if __name__ == "__main__":
    main()
