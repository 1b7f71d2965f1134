#!/usr/bin/env bash
# Runs the HTTP and MQTT attacks against one cyncd binary, the same way for any build:
#
#   tools/attack/frontends_run.sh path/to/cyncd OUT_DIR
#
# Starts a private mosquitto (loopback, no persistence), `cyncd serve --plain` with MQTT under an
# open-file limit of 1024 (soft and hard, so idle connections can exhaust it), a simulated fleet
# of 20 bridges × 10 devices, then http_flood.py and mqtt_flood.py; and a separate start with a
# password in the MQTT URL, to count where it is printed. Results: OUT_DIR/*.json, *.log.
set -euo pipefail
bin=$(realpath "$1")
out=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
state=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mport=$(free_port); dport=$(free_port); hport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n' "$mport" > "$state/mosquitto.conf"
mosquitto -c "$state/mosquitto.conf" & mpid=$!
cleanup() { kill "$spid" "$cpid" "$mpid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$state"; }
trap cleanup EXIT
sleep 0.5
(ulimit -n 1024; ulimit -Hn 1024; exec "$bin" serve --plain --listen 127.0.0.1:$dport --http 127.0.0.1:$hport \
    --state-dir "$state/cyncd" --mqtt mqtt://127.0.0.1:$mport --log-format json) > "$out/serve.out" 2> "$out/serve.log" & cpid=$!
for _ in $(seq 100); do grep -q "HTTP on" "$out/serve.out" 2>/dev/null && break; sleep 0.1; done
"$bin" sim --plain --server 127.0.0.1:$dport --bridges 20 --devices-per-bridge 10 --seed 1 > "$out/sim.out" 2>&1 & spid=$!
sleep 8
token=()
[ -f "$state/cyncd/api-token" ] && token=(--token-file "$state/cyncd/api-token")
python3 "$here/http_flood.py" --http 127.0.0.1:$hport --devices 127.0.0.1:$dport --pid "$cpid" "${token[@]}" > "$out/http.json"
python3 "$here/mqtt_flood.py" --broker 127.0.0.1:$mport --http 127.0.0.1:$hport --log "$out/serve.log" "${token[@]}" > "$out/mqtt.json"
kill "$spid" "$cpid"; wait "$spid" "$cpid" 2>/dev/null || true

# The secret: a password in the MQTT URL, an unreachable broker, 3 s of logs.
timeout -s TERM 3 "$bin" serve --plain --listen 127.0.0.1:0 --http 127.0.0.1:0 --state-dir "$state/secret" \
    --mqtt mqtt://user:SECRET@127.0.0.1:1/ > "$out/secret.log" 2>&1 || true
echo "{\"SECRET_printed\": $(grep -o SECRET "$out/secret.log" | wc -l)}" > "$out/secret.json"
cat "$out"/*.json
