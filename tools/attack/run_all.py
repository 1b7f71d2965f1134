#!/usr/bin/env python3
"""Runs every attack script against each binary given and prints one Markdown table.

Usage: python3 tools/attack/run_all.py BINARY [BINARY ...]   (e.g. a build of main, then yours)
Each script starts its own server on loopback; the whole run takes about two minutes per binary.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(script, binary):
    out = subprocess.run([sys.executable, os.path.join(HERE, script), "--cyncd", binary],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(out.stdout)


def rows(r):
    t, h, f, fill, g = r["takeover"], r["hellos4"], r["forged"], r["fill"], r["flood"]
    loop = t.get("loop", {})
    yield ("empty-code takeover", f"answered {t['empty_code']['answered']}, real session replaced "
           f"{t['empty_code']['real_session_replaced']}")
    yield ("takeover loop 10 s", f"{loop.get('takeovers')} takeovers of {loop.get('attempts')} attempts, "
           f"{loop.get('commands_received')} command packets to the impostor, real bridge kicked "
           f"{loop.get('real_bridge_disconnects')}x, API outcomes {loop.get('api_outcomes')}")
    yield ("four hellos in one write", f"{h.get('hello_acks_received')} hellos answered, "
           f"{h.get('real_sessions_replaced')} real sessions replaced")
    yield ("forged 0x43 state (real id, empty code)",
           f"forged state shown {f['real_id_empty_code']['forged_state_shown']}")
    yield ("forged 0x43 state (new id, no [[homes]])", f"forged state shown {f['fresh_id']['forged_state_shown']}")
    homes = f["fresh_id_homes_refuse_unknown"]
    yield ("forged 0x43 state (new id, [[homes]] + refuse_unknown_bridges)",
           homes if isinstance(homes, str) else f"forged state shown {homes['forged_state_shown']}")
    yield ("table fill, 65,536 reports from one id", f"{fill.get('devices_after_flood')} devices after "
           f"{fill.get('seconds')} s; configured home's devices found {fill.get('cabin_devices_found')}/2, "
           f"command {fill.get('cabin_command')}; refusals exported {fill.get('refusals_exported')}")
    yield ("reserved-byte flood 5 s", f"{g.get('bytes_in', 0) / 1e6:.0f} MB in, {g.get('log_bytes', 0) / 1e6:.3f} MB "
           f"of log = {g.get('log_bytes_per_byte_in')} log bytes per byte in, {g.get('server_cpu_cores')} cores")


def main():
    binaries = sys.argv[1:]
    if not binaries:
        sys.exit(__doc__)
    results = []
    for b in binaries:
        r = {name: run(script, b) for name, script in [
            ("takeover", "takeover.py"), ("hellos4", "hellos4.py"), ("forged", "forged_state.py"),
            ("fill", "table_fill.py"), ("flood", "garbage_flood.py")]}
        print(json.dumps({"binary": b, **r}), file=sys.stderr)
        results.append(dict(rows(r)))
    print("| attack | " + " | ".join(binaries) + " |")
    print("|---|" + "---|" * len(binaries))
    for attack in results[0]:
        print(f"| {attack} | " + " | ".join(r.get(attack, "") for r in results) + " |")


if __name__ == "__main__":
    main()
