#!/usr/bin/env python3
"""Table fill: 65,536 forged 0x83 reports from one unknown bridge id, then a configured home's
real bridge connects.

Starts cyncd with one home "cabin" listing bridge 51000000, sends the reports from bridge id
66000000 (a hello, then every mesh id 0..65535, each answered), then starts the simulated
cabin bridge (2 devices) and checks whether its devices appear and take a command.

Usage: python3 tools/attack/table_fill.py --cyncd target/release/cyncd
"""

import time

import common as c

CONFIG = f'[[homes]]\nname = "cabin"\nbridges = ["{c.SIM_BASE:08x}"]\n'


def main():
    args = c.parser(__doc__).parse_args()
    server = c.Server(args.cyncd, config=CONFIG)
    result = {"binary": args.cyncd}
    sim = None
    try:
        forger = 0x66000000
        s = c.tls_connect(server.devices)
        s.sendall(c.hello(forger, b"0123456789abcdef"))
        assert c.read_exact(s, 7) == bytes.fromhex("28 00 00 00 02 00 00")
        t0 = time.monotonic()
        chunk = 1000
        for start in range(0, 65536, chunk):
            ids = range(start, min(start + chunk, 65536))
            s.sendall(b"".join(c.report(forger, m, m) for m in ids))
            # Each report is answered with a 0x88 (8 bytes); read them so the server keeps
            # reading (announce and mesh request packets may come in between).
            want = 8 * len(ids)
            got = b""
            while sum(1 for p in c.packets(got) if p[0] == 0x88) < len(ids):
                got += c.read_exact(s, 1) if len(got) >= want else c.read_exact(s, want - len(got))
        s.sendall(bytes.fromhex("d3 00 00 00 00"))
        sent = time.monotonic() - t0
        devices = c.get_json(server.http + "/api/devices", args.token)
        result["forged_reports"] = 65536
        result["seconds"] = round(sent, 2)
        result["devices_after_flood"] = len(devices)
        sim = c.Sim(args.cyncd, server, bridges=1, devices=2)
        try:
            c.wait_for(lambda: c.connections(server, args.token).get(f"{c.SIM_BASE:08x}"),
                       what="the cabin bridge")
            c.wait_for(lambda: sum(1 for d in c.get_json(server.http + "/api/devices", args.token)
                                   if d["home"] == "cabin") == 2, seconds=10, what="cabin devices")
            result["cabin_devices_found"] = 2
        except TimeoutError:
            result["cabin_devices_found"] = sum(
                1 for d in c.get_json(server.http + "/api/devices", args.token) if d["home"] == "cabin")
        result["cabin_command"] = c.set_device(server, "cabin:1", True, args.token)
        metrics = c.api("GET", server.http + "/metrics", token=args.token)[1]
        refused = [l for l in metrics.splitlines()
                   if l.startswith("cyncd_statuses_refused_total") and not l.endswith(" 0")]
        result["refusals_exported"] = refused or "none"
        s.close()
    finally:
        if sim:
            sim.stop()
        server.stop()
    c.emit(result)


if __name__ == "__main__":
    main()
