#!/bin/sh
# Runs the whole ntpscope system on one machine with the embedded defaults:
#   nats-server 2.15 (JetStream, store under state/nats, port 14222 so it never collides with a
#   NATS that may already listen on 4222) → ntpscope-sink (SQLite data/ntp_clients.db) ←
#   ntpscope-capture (live on IFACE, port PORT).
# Ctrl-C (or SIGTERM) stops the agent first, then the sink (which commits what it holds), then
# nats-server. Running it again resumes on the same data.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
IFACE=${IFACE:-$(ip route show default 2>/dev/null | awk '{print $5; exit}')}
PORT=${PORT:-123}
NATS_PORT=${NATS_PORT:-14222}
state="$root/state"
mkdir -p "$state/nats" "$root/data"
nats_bin="$root/.tools/venv/bin/nats-server"
url="nats://127.0.0.1:$NATS_PORT"

if [ -z "$IFACE" ]; then
    echo "run: no default interface found; use IFACE=eth0" >&2
    exit 1
fi
if ss -ltn 2>/dev/null | grep -q ":$NATS_PORT "; then
    echo "run: port $NATS_PORT is in use; set NATS_PORT to a free port" >&2
    exit 1
fi

pids=""
stop() {
    trap - INT TERM EXIT
    echo "run: stopping"
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

"$nats_bin" -js -sd "$state/nats" -a 127.0.0.1 -p "$NATS_PORT" -l "$state/nats-server.log" &
nats_pid=$!
for _ in $(seq 50); do
    ss -ltn 2>/dev/null | grep -q ":$NATS_PORT " && break
    sleep 0.1
done

NTPSCOPE_NATS_URL="$url" ./target/release/ntpscope-sink --db-path "$root/data/ntp_clients.db" 2>>"$state/sink.log" &
sink_pid=$!
NTPSCOPE_NATS_URL="$url" ./target/release/ntpscope-capture --interface "$IFACE" --port "$PORT" --output nats &
agent_pid=$!
# Stop order: agent, sink, nats-server.
pids="$agent_pid $sink_pid $nats_pid"

echo "run: capturing NTP on $IFACE port $PORT → $url → $root/data/ntp_clients.db (logs in $state/)"
echo "run: Ctrl-C stops everything; sqlite3 data/ntp_clients.db 'select * from ntp_clients' shows the clients"
wait "$agent_pid"
