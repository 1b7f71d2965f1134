#!/usr/bin/env python3
"""Four hellos in one TCP write: both real bridges' ids (wrong codes) and two fresh ids.

Starts cyncd and a simulated home (2 bridges x 2 devices), writes the four hellos on one TLS
connection, and counts what was answered and how many real bridges lost their session.

Usage: python3 tools/attack/hellos4.py --cyncd target/release/cyncd
"""

import time

import common as c


def main():
    args = c.parser(__doc__).parse_args()
    server = c.Server(args.cyncd)
    sim = c.Sim(args.cyncd, server, bridges=2, devices=2)
    real = [c.SIM_BASE, c.SIM_BASE + 1]
    result = {"binary": args.cyncd}
    try:
        c.wait_for(lambda: len(c.connections(server, args.token)) == 2, what="two bridges")
        c.wait_for(lambda: c.set_device(server, "default:2", False, args.token) == "applied",
                   what="a first command applied")
        before = {k: v["since"] for k, v in c.connections(server, args.token).items()}
        disconnects = sim.summary()["disconnects"]
        burst = b"".join(c.hello(i, b"0123456789abcdef") for i in [*real, 0x66000001, 0x66000002])
        s = c.tls_connect(server.devices)
        s.sendall(burst)
        got, closed = c.read_for(s, 2.0)
        s.close()
        time.sleep(1.0)
        after = {k: v["since"] for k, v in c.connections(server, args.token).items()}
        replaced = sum(1 for k in before if after.get(k) != before[k])
        result.update({
            "hello_acks_received": got.count(bytes.fromhex("28 00 00 00 02 00 00")),
            "connection_closed": closed,
            "real_sessions_replaced": replaced,
            "real_bridge_disconnects": sim.summary()["disconnects"] - disconnects,
            "command_after": c.set_device(server, "default:2", True, args.token),
        })
    finally:
        sim.stop()
        server.stop()
    c.emit(result)


if __name__ == "__main__":
    main()
