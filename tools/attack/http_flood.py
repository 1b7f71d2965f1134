#!/usr/bin/env python3
"""Attacks on cyncd's HTTP server as a stranger on the LAN would try them; prints one JSON
object with what each did. Python 3.11 standard library only; loopback targets only.

    http_flood.py --http 127.0.0.1:8080 --devices 127.0.0.1:23779 --pid PID [--token-file F]

--devices must be a plain-TCP device listener (cyncd serve --plain) for the "devices still
connect" check. --pid is cyncd's process id (its RSS and open files are read from /proc).
Every connection is closed by the end; the whole run is bounded in time.
"""

import argparse
import json
import os
import resource
import socket
import struct
import threading
import time


def parse_addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def request(addr, raw, timeout=10.0):
    """Sends raw bytes, returns (status, whole answer bytes)."""
    s = socket.create_connection(addr, timeout=timeout)
    try:
        try:
            s.sendall(raw)
        except OSError:
            pass
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    status = 0
    if data.startswith(b"HTTP/1."):
        status = int(data.split(b" ", 2)[1])
    return status, data


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def held_for(sockets, limit):
    """Waits until the server closes each socket (or `limit` s); returns per-socket seconds."""
    start = time.monotonic()
    held = [None] * len(sockets)
    for s in sockets:
        s.setblocking(False)
    while time.monotonic() - start < limit and any(h is None for h in held):
        for i, s in enumerate(sockets):
            if held[i] is not None:
                continue
            try:
                chunk = s.recv(4096)
                if not chunk:
                    held[i] = time.monotonic() - start
            except BlockingIOError:
                pass
            except OSError:
                held[i] = time.monotonic() - start
        time.sleep(0.05)
    for s in sockets:
        s.close()
    return [h if h is not None else float(limit) for h in held]


def summary(values):
    values = sorted(values)
    if not values:
        return {}
    return {
        "n": len(values),
        "median_s": round(values[len(values) // 2], 2),
        "max_s": round(values[-1], 2),
    }


def hello(conn_id):
    p = bytes([0x23, 0, 0, 0, 0x1A, 0x03]) + conn_id + bytes([0, 0x10]) + b"0" * 16
    return p + bytes([0, 0, 0x3C])


def device_connects(addr, n):
    """Plain-TCP devices saying hello; how many got their 0x28 ACK."""
    ok = 0
    for i in range(n):
        try:
            s = socket.create_connection(addr, timeout=3)
            s.sendall(hello(struct.pack(">I", 0x7A000000 + i)))
            data = s.recv(7)
            ok += data[:1] == b"\x28"
            s.close()
        except OSError:
            pass
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--http", required=True)
    ap.add_argument("--devices", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--token-file")
    ap.add_argument("--slow", type=int, default=500, help="slow-header connections")
    ap.add_argument("--stalled", type=int, default=200, help="stalled 2 MB bodies")
    ap.add_argument("--idle", type=int, default=1100, help="idle connections")
    ap.add_argument("--hold-limit", type=float, default=70.0)
    args = ap.parse_args()
    http, devices = parse_addr(args.http), parse_addr(args.devices)
    assert http[0].startswith("127.") and devices[0].startswith("127."), "loopback only"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    token = ""
    if args.token_file:
        with open(args.token_file) as f:
            token = f.readline().strip()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    host = f"Host: {args.http}\r\n"
    out = {}

    # No token at all.
    out["no_token_GET_api_devices"] = request(http, f"GET /api/devices HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode())[0]
    # DNS rebinding: a foreign Host (with the token, as a rebinding page could not have it,
    # to show the Host check alone).
    out["foreign_host_GET_api_devices"] = request(
        http, f"GET /api/devices HTTP/1.1\r\nHost: attacker.test\r\n{auth}Connection: close\r\n\r\n".encode()
    )[0]
    # CSRF: a cross-site text/plain PUT that would set the kill switch.
    body = b'{"kill": true}'
    status, _ = request(
        http,
        f"PUT /api/canary HTTP/1.1\r\n{host}{auth}Content-Type: text/plain\r\nOrigin: http://attacker.test\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    _, canary = request(http, f"GET /api/canary HTTP/1.1\r\n{host}{auth}Connection: close\r\n\r\n".encode())
    out["csrf_text_plain_PUT_canary"] = {"status": status, "kill_applied": b'"kill":true' in canary}
    if b'"kill":true' in canary:
        fix = b'{"kill": false}'
        request(
            http,
            f"PUT /api/canary HTTP/1.1\r\n{host}{auth}Content-Type: application/json\r\nContent-Length: {len(fix)}\r\nConnection: close\r\n\r\n".encode()
            + fix,
        )
    # Echo: a 1.9 MB effect name.
    big = b'{"effect": "' + b"A" * 1_900_000 + b'"}'
    status, answer = request(
        http,
        f"POST /api/devices/1/state HTTP/1.1\r\n{host}{auth}Content-Type: application/json\r\nContent-Length: {len(big)}\r\nConnection: close\r\n\r\n".encode()
        + big,
        timeout=30,
    )
    out["echo_1_9MB_body"] = {"status": status, "answer_bytes": len(answer)}

    # Slow headers.
    rss0 = rss_mib(args.pid)
    slow = []
    for i in range(args.slow):
        try:
            s = socket.create_connection(http, timeout=5)
            s.sendall(f"GET /api/devices HTTP/1.1\r\nHost: {args.http}\r\nX-{i}: ".encode())
            slow.append(s)
        except OSError:
            break
    out["slow_headers"] = {"opened": len(slow), **summary(held_for(slow, args.hold_limit))}

    # Stalled bodies: 2 MB announced, all but the last byte sent.
    stalled = []
    chunk = b"A" * 65536
    size = 2_000_000
    start = time.monotonic()
    for _ in range(args.stalled):
        try:
            s = socket.create_connection(http, timeout=5)
            s.sendall(
                f"POST /api/devices/1/state HTTP/1.1\r\n{host}{auth}Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            sent = 0
            s.settimeout(0.5)
            try:
                while sent < size - 1:
                    n = s.send(chunk[: min(len(chunk), size - 1 - sent)])
                    sent += n
            except OSError:
                pass
            stalled.append((s, sent))
        except OSError:
            break
    peak = rss_mib(args.pid)
    sent_total = sum(n for _, n in stalled)
    out["stalled_bodies"] = {
        "opened": len(stalled),
        "body_bytes_sent_mib": round(sent_total / 2**20, 1),
        "server_rss_before_mib": round(rss0, 1),
        "server_rss_peak_mib": round(peak, 1),
        "seconds_to_send": round(time.monotonic() - start, 1),
        **summary(held_for([s for s, _ in stalled], args.hold_limit)),
    }

    # Idle connections, then devices.
    idle = []
    for _ in range(args.idle):
        try:
            idle.append(socket.create_connection(http, timeout=2))
        except OSError:
            break
    time.sleep(1.0)
    out["idle_connections"] = {
        "opened": len(idle),
        "server_open_files": open_files(args.pid),
        "devices_acked_of_50": device_connects(devices, 50),
    }
    for s in idle:
        s.close()
    out["devices_acked_of_50_after"] = device_connects(devices, 50)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
