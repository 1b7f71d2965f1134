#!/usr/bin/env python3
"""Forged state: a hello and one 0x43 status record set a device's shown state.

Starts cyncd and a simulated home (2 bridges x 2 devices; device default:2 is behind bridge
51000000), then sends a hello and a 0x43 record saying device 2 is on at brightness 37 (the
simulator's device stays off):
- "real_id_empty_code": with the real bridge's id and an empty code;
- "fresh_id": with an id never seen (pinned on first use where cyncd pins);
- "fresh_id_homes_refuse_unknown": the same against a server whose [[homes]] list the real
  bridges with refuse_unknown_bridges (only on builds that have the option).
Each reports whether the hello was answered and whether the API then showed the forged state.

Usage: python3 tools/attack/forged_state.py --cyncd target/release/cyncd
"""

import time

import common as c


def attempt(server, sim, token, conn_id, code):
    c.wait_for(lambda: len(c.connections(server, token)) == 2, what="two bridges")
    device = f"{server.home}:2"
    c.wait_for(lambda: c.set_device(server, device, False, token) == "applied",
               what="device 2 off")
    s = c.tls_connect(server.devices)
    s.sendall(c.hello(conn_id, code) + c.info_record(conn_id, 2, True, 37))
    got, _ = c.read_for(s, 1.0)
    s.close()
    time.sleep(0.5)
    shown = c.get_json(f"{server.http}/api/devices/{device}", token)
    truth = next(d for d in sim.devices() if d["id"] == 2)
    return {
        "answered": got.startswith(bytes.fromhex("28 00 00 00 02 00 00")),
        "shown_on": shown.get("on"),
        "shown_brightness": shown.get("brightness"),
        "device_really_on": truth["on"],
        "forged_state_shown": bool(shown.get("on")) and shown.get("brightness") == 37,
    }


def run(binary, token, config, conn_id, code):
    server = c.Server(binary, config=config)
    server.home = "cabin" if config else "default"
    sim = c.Sim(binary, server, bridges=2, devices=2)
    try:
        return attempt(server, sim, token, conn_id, code)
    finally:
        sim.stop()
        server.stop()


def main():
    args = c.parser(__doc__).parse_args()
    result = {"binary": args.cyncd}
    result["real_id_empty_code"] = run(args.cyncd, args.token, None, c.SIM_BASE, b"")
    result["fresh_id"] = run(args.cyncd, args.token, None, 0x66000003, b"0123456789abcdef")
    if c.supports(args.cyncd, "--refuse-unknown-bridges"):
        config = ('refuse_unknown_bridges = true\n[[homes]]\nname = "cabin"\n'
                  f'bridges = ["{c.SIM_BASE:08x}", "{c.SIM_BASE + 1:08x}"]\n')
        result["fresh_id_homes_refuse_unknown"] = run(
            args.cyncd, args.token, config, 0x66000003, b"0123456789abcdef")
    else:
        result["fresh_id_homes_refuse_unknown"] = "option not in this build"
    c.emit(result)


if __name__ == "__main__":
    main()
