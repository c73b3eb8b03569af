#!/bin/sh
# Runs the whole ntpscope system on one machine with the embedded defaults:
#
#   ntpscope-capture (live on IFACE, port PORT, controllable over NATS)
#     → nats-server 2.15 (JetStream, store under state/nats, port NATS_PORT=14222 so it never
#       collides with a NATS that may already listen on 4222)
#     → ntpscope-sink (migrates and writes SQLite data/ntp_clients.db)
#     ← ntpscope-api (http://127.0.0.1:API_PORT, default 8000; token in state/api-token)
#
# On the first run it also replays the bundled sample captures (real NTP traffic from public
# test suites, capture/tests/fixtures) through a second agent named "sample", so the API shows
# clients at once. Ctrl-C (or SIGTERM) stops the agent first, then the API, then the sink (which
# commits and acknowledges what it holds), then nats-server: nothing is lost. Running it again
# resumes on the same data.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
IFACE=${IFACE:-$(ip route show default 2>/dev/null | awk '{print $5; exit}')}
PORT=${PORT:-123}
NATS_PORT=${NATS_PORT:-14222}
API_PORT=${API_PORT:-8000}
state="$root/state"
bin="$root/target/release"
mkdir -p "$state/nats" "$root/data"
nats_bin="$root/.tools/venv/bin/nats-server"
url="nats://127.0.0.1:$NATS_PORT"
api="http://127.0.0.1:$API_PORT"

if [ -z "$IFACE" ]; then
    echo "run: no default interface found; use IFACE=eth0 (or IFACE=any)" >&2
    exit 1
fi
for p in "$NATS_PORT" "$API_PORT"; do
    if ss -ltn 2>/dev/null | grep -q "[:.]$p "; then
        echo "run: TCP port $p is in use; set NATS_PORT or API_PORT to a free port" >&2
        exit 1
    fi
done

# The API token protects cleanup and capture control; made once, kept with the state.
if [ ! -s "$state/api-token" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/api-token")
fi
token=$(cat "$state/api-token")

pids=""
stop() {
    trap - INT TERM EXIT
    echo
    echo "run: stopping (agent, API, sink, nats-server)"
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    echo "run: stopped; run it again to resume on the same data"
}
trap stop INT TERM EXIT

wait_for() { # URL-or-port, seconds
    i=0
    while [ "$i" -lt "$(($2 * 10))" ]; do
        case "$1" in
            http*) curl -s -o /dev/null "$1" && return 0 ;;
            *) ss -ltn 2>/dev/null | grep -q "[:.]$1 " && return 0 ;;
        esac
        i=$((i + 1))
        sleep 0.1
    done
    return 1
}

"$nats_bin" -js -sd "$state/nats" -a 127.0.0.1 -p "$NATS_PORT" -l "$state/nats-server.log" &
nats_pid=$!
pids="$nats_pid"
wait_for "$NATS_PORT" 10 || { echo "run: nats-server did not start; see $state/nats-server.log" >&2; exit 1; }

"$bin/ntpscope-migrate" --database-url "sqlite://$root/data/ntp_clients.db?mode=rwc" up 2>>"$state/migrate.log" ||
    { echo "run: migrating data/ntp_clients.db failed; see $state/migrate.log" >&2; exit 1; }

export NTPSCOPE_NATS_URL="$url"
"$bin/ntpscope-sink" --db-path "$root/data/ntp_clients.db" 2>>"$state/sink.log" &
sink_pid=$!
pids="$sink_pid $pids"
"$bin/ntpscope-api" --listen "127.0.0.1:$API_PORT" --db-path "$root/data/ntp_clients.db" \
    --token-file "$state/api-token" 2>>"$state/api.log" &
api_pid=$!
pids="$api_pid $pids"

"$bin/ntpscope-capture" --daemon --interface "$IFACE" --port "$PORT" --output nats 2>>"$state/agent.log" &
agent_pid=$!
# Stop order: agent, API, sink, nats-server.
pids="$agent_pid $pids"

wait_for "$api/api/ntp/history/health" 30 || { echo "run: the API did not start; see $state/api.log" >&2; exit 1; }

if [ ! -e "$state/sample-replayed" ]; then
    echo "run: replaying the bundled sample captures as agent \"sample\""
    "$bin/ntpscope-capture" --agent-id sample --output nats --flush-pending --summary none \
        $(for f in capture/tests/fixtures/*.pcap; do printf -- '-r %s ' "$f"; done) 2>>"$state/agent.log" &&
        touch "$state/sample-replayed"
fi

cat <<EOF

ntpscope is running: capturing NTP on $IFACE (port $PORT) → $url → data/ntp_clients.db
  Swagger UI   $api/docs
  OpenAPI      $api/openapi.yaml
  API token    $token   (also in state/api-token; needed for cleanup and capture control)
  Logs         state/*.log

Try:
  curl -s '$api/api/ntp/history/clients?page=1&page_size=5'
  curl -s -X POST -H 'Authorization: Bearer $token' -H 'Content-Type: application/json' \\
       -d '{"port": $PORT, "timeout": 2.0}' $api/api/ntp/interfaces/$IFACE/stop

Ctrl-C stops everything.
EOF
wait "$agent_pid"
