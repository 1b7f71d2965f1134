"""Shared pieces of the attack scripts: start `cyncd serve` and a simulated home (`cyncd sim`)
on loopback, connect as a device over TLS, build packets, call the HTTP API.

Every script starts its own server with a fresh state directory, runs one attack for a bounded
time against 127.0.0.1 only, stops everything and prints its numbers as one JSON object. Give
the binary to test with --cyncd, so the same command measures two builds.
"""

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

DEVICE_CIPHERS = "AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA"
# `cyncd sim` numbers its bridges from this id.
SIM_BASE = 0x51000000

# The API token of the server started last (builds with an API token write it to `api-token`
# in their state directory); used when a call is given no token of its own.
SERVER_TOKEN = None

REPORT = bytes.fromhex(
    "83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00 db"
    " 11 02 01 01 0a 0a ff ff ff 00 00 88 7e")


def parser(doc):
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--cyncd", required=True, help="the cyncd binary to attack")
    ap.add_argument("--token", default=os.environ.get("CYNCD_TOKEN"),
                    help="HTTP API bearer token, when the build needs one (or CYNCD_TOKEN)")
    return ap


def hello(conn_id, code):
    """A 0x23 hello for `conn_id` carrying `code` (bytes, possibly empty)."""
    body = b"\x03" + conn_id.to_bytes(4, "big") + len(code).to_bytes(2, "big") + code + b"\x00\x00\x3c"
    return b"\x23\x00\x00" + len(body).to_bytes(2, "big") + body


def report(conn_id, mesh, counter, brightness=10):
    """A 0x83 status report of bridge `conn_id` about mesh device `mesh` (u16)."""
    p = bytearray(REPORT)
    p[5:9] = conn_id.to_bytes(4, "big")
    p[9:11] = (counter & 0xFFFF).to_bytes(2, "big")
    p[24:26] = mesh.to_bytes(2, "little")
    p[26:28] = mesh.to_bytes(2, "little")
    p[33] = brightness & 0xFF
    p[-2] = sum(p[18:-2]) & 0xFF
    return bytes(p)


def info_record(conn_id, mesh, on, brightness):
    """A 0x43 with one status record (index 05: the device's own) for `mesh` (one byte)."""
    record = bytes([0x05, 0x00, 0x10, mesh & 0xFF, 1 if on else 0, brightness, 0x0A,
                    0xFF, 0xFF, 0xFF, 0x01, 0x00, mesh & 0xFF, 0, 0, 0, 0, 0, 0])
    body = conn_id.to_bytes(4, "big") + b"\x01\x01\x06" + record
    return b"\x43\x00\x00" + len(body).to_bytes(2, "big") + body


def tls_connect(addr, timeout=5.0):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(DEVICE_CIPHERS)
    host, port = addr
    raw = socket.create_connection((host, port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="cm.gelighting.com")


def read_for(sock, seconds):
    """Everything the peer sends within `seconds` or until it closes; (bytes, closed)."""
    out = bytearray()
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return bytes(out), False
        except (ConnectionError, OSError, ssl.SSLError):
            return bytes(out), True
        if not chunk:
            return bytes(out), True
        out += chunk


def read_exact(sock, n, seconds=10.0):
    out = bytearray()
    sock.settimeout(seconds)
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return bytes(out)


def packets(data):
    """Splits bytes into whole packets by the 5-byte header."""
    out, i = [], 0
    while i + 5 <= len(data):
        n = 5 + int.from_bytes(data[i + 3:i + 5], "big")
        if i + n > len(data):
            break
        out.append(data[i:i + n])
        i += n
    return out


class Server:
    """`cyncd serve` on loopback ephemeral ports, TLS, logs in a file."""

    def __init__(self, binary, config=None, extra=()):
        self.dir = tempfile.mkdtemp(prefix="cyncd-attack-")
        self.log_path = os.path.join(self.dir, "cyncd.log")
        args = [binary, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
                "--state-dir", os.path.join(self.dir, "state"), *extra]
        if config is not None:
            path = os.path.join(self.dir, "cyncd.toml")
            with open(path, "w") as f:
                f.write(config)
            args += ["--config", path]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("cyncd: devices on"):
            raise RuntimeError(f"cyncd did not start: {line!r}; see {self.log_path}")
        words = line.split()
        host, _, port = words[3].rpartition(":")
        self.devices = (host, int(port))
        self.http = next(w for w in words if w.startswith("http://")).rstrip(",")
        self.pid = self.proc.pid
        global SERVER_TOKEN
        SERVER_TOKEN = None
        token_path = os.path.join(self.dir, "state", "api-token")
        if os.path.exists(token_path):
            with open(token_path) as f:
                SERVER_TOKEN = f.read().strip()

    def log_bytes(self):
        self.log.flush()
        return os.path.getsize(self.log_path)

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Sim:
    """`cyncd sim`: `bridges` simulated bridges with `devices` mesh devices each."""

    def __init__(self, binary, server, bridges=2, devices=2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.api = f"http://127.0.0.1:{s.getsockname()[1]}"
        s.close()
        host, port = server.devices
        self.proc = subprocess.Popen(
            [binary, "sim", "--server", f"{host}:{port}", "--bridges", str(bridges),
             "--devices-per-bridge", str(devices), "--seed", "1",
             "--api", self.api.removeprefix("http://")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def summary(self):
        return get_json(self.api + "/sim/summary")

    def devices(self):
        return get_json(self.api + "/sim/devices")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def get_json(url, token=None):
    return api("GET", url, token=token)[1]


def api(method, url, body=None, token=None):
    """(status, JSON answer or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    token = token or SERVER_TOKEN
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def wait_for(check, seconds=20.0, what="condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {seconds} s")


def connections(server, token=None):
    return {c["conn_id"]: c for c in get_json(server.http + "/api/connections", token)}


def set_device(server, device, on, token=None):
    """A command through the API; its outcome (or the HTTP error)."""
    status, answer = api("POST", f"{server.http}/api/devices/{device}/state", {"on": on}, token)
    if isinstance(answer, dict) and "outcome" in answer:
        return answer["outcome"]
    return f"http_{status}"


def supports(binary, flag):
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    return flag in out


def emit(result):
    print(json.dumps(result, indent=2))
