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
#
# Settings (environment): IFACE (default: the interface of the default route), PORT (123),
# NATS_PORT (14222), API_PORT (8000), NTPSCOPE_STATE (state/: NATS store, logs, token),
# NTPSCOPE_DATA (data/: the SQLite database), BIN_DIR (target/release, where `make build` puts
# the binaries).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
IFACE=${IFACE:-$(ip route show default 2>/dev/null | awk '{print $5; exit}')}
PORT=${PORT:-123}
NATS_PORT=${NATS_PORT:-14222}
API_PORT=${API_PORT:-8000}
state=${NTPSCOPE_STATE:-$root/state}
data=${NTPSCOPE_DATA:-$root/data}
bin=${BIN_DIR:-$root/target/release}
mkdir -p "$state/nats" "$data"
db="$data/ntp_clients.db"
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
    exit 0
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

# Each service runs in its own session (setsid), so that Ctrl-C reaches only this script, which
# then stops them in order: agent, API, sink (which commits what it holds), nats-server.
setsid "$nats_bin" -js -sd "$state/nats" -a 127.0.0.1 -p "$NATS_PORT" -l "$state/nats-server.log" &
nats_pid=$!
pids="$nats_pid"
wait_for "$NATS_PORT" 10 || { echo "run: nats-server did not start; see $state/nats-server.log" >&2; exit 1; }

"$bin/ntpscope-migrate" --database-url "sqlite://$db?mode=rwc" up 2>>"$state/migrate.log" ||
    { echo "run: migrating $db failed; see $state/migrate.log" >&2; exit 1; }

export NTPSCOPE_NATS_URL="$url"
setsid "$bin/ntpscope-sink" --db-path "$db" 2>>"$state/sink.log" &
sink_pid=$!
pids="$sink_pid $pids"
setsid "$bin/ntpscope-api" --listen "127.0.0.1:$API_PORT" --db-path "$db" \
    --token-file "$state/api-token" 2>>"$state/api.log" &
api_pid=$!
pids="$api_pid $pids"

setsid "$bin/ntpscope-capture" --daemon --interface "$IFACE" --port "$PORT" --output nats 2>>"$state/agent.log" &
agent_pid=$!
# Stop order: agent, API, sink, nats-server.
pids="$agent_pid $pids"

wait_for "$api/api/ntp/history/health" 30 || { echo "run: the API did not start; see $state/api.log" >&2; exit 1; }
# The agent reports its interfaces within a status interval; the API's listing shows it online.
i=0
until curl -fsS "$api/api/ntp/interfaces" 2>/dev/null | grep -q '"agents_online":\["'; do
    i=$((i + 1))
    if [ "$i" -gt 300 ] || ! kill -0 "$agent_pid" 2>/dev/null; then
        echo "run: the capture agent on $IFACE is not reporting; see $state/agent.log" >&2
        exit 1
    fi
    sleep 0.1
done

if [ ! -e "$state/sample-replayed" ]; then
    echo "run: replaying the bundled sample captures as agent \"sample\""
    "$bin/ntpscope-capture" --agent-id sample --output nats --flush-pending --summary none \
        $(for f in capture/tests/fixtures/*.pcap; do printf -- '-r %s ' "$f"; done) 2>>"$state/agent.log" &&
        touch "$state/sample-replayed"
    # Let the sink store it before saying the system is ready.
    i=0
    until curl -fsS "$api/api/ntp/history/service/statistics" 2>/dev/null |
        grep -q '"consumer_ack_pending":0,"consumer_pending":0,'; do
        i=$((i + 1))
        [ "$i" -gt 300 ] && { echo "run: the sink is slow to store the sample; see $state/sink.log" >&2; break; }
        sleep 0.1
    done
else
    echo "run: resuming on $db (the sample was replayed on the first run)"
fi

cat <<EOF

ntpscope is running: capturing NTP on $IFACE (port $PORT) → $url → $db
  Swagger UI   $api/docs
  OpenAPI      $api/openapi.yaml
  API token    $token   (also in $state/api-token; needed for cleanup and capture control)
  Logs         $state/*.log

Try:
  curl -fsS '$api/api/ntp/history/clients?page=1&page_size=5'
  curl -fsS -X POST -H 'Authorization: Bearer $token' -H 'Content-Type: application/json' \\
       -d '{}' $api/api/ntp/interfaces/$IFACE/stop

Ctrl-C stops everything.
EOF
wait "$agent_pid"
