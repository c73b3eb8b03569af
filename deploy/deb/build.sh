#!/bin/sh
# Builds the Debian packages of ntpscope with dpkg-deb (no cargo-deb needed):
#
#   deploy/deb/build.sh [BIN_DIR] [OUT_DIR]
#
#   BIN_DIR  where ntpscope-capture, ntpscope-sink and ntpscope-api are (default target/release;
#            `make build` puts them there)
#   OUT_DIR  where the .deb files go (default target/deb)
#   DEB_COMPRESSION=xz|gzip|none  (default xz; the tests use none)
#
# One package per service, each with its binary, its hardened systemd unit (installed, not
# enabled or started) and its example configuration under /etc/ntpscope (a conffile: upgrades
# keep local edits). The packages create the `ntpscope` system user. The sink package also
# carries the NATS server configuration example and ntpscope-migrate when BIN_DIR has it.
#
# A fleet of capture hosts then installs the agent with:
#
#   apt install ./ntpscope-capture_<version>_<arch>.deb
#   editor /etc/ntpscope/capture.toml && systemctl enable --now ntpscope-capture
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release}
out=${2:-$root/target/deb}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")
arch=$(dpkg --print-architecture)
mkdir -p "$out"

build() {
    svc=$1 depends=$2 summary=$3
    pkg=ntpscope-$svc
    [ -x "$bin/$pkg" ] || { echo "deb: $bin/$pkg not found (build it first: make build)" >&2; exit 1; }
    stage=$(mktemp -d)
    chmod 0755 "$stage"
    trap 'rm -rf "$stage"' EXIT
    install -D -m 0755 "$bin/$pkg" "$stage/usr/bin/$pkg"
    install -D -m 0644 "$root/deploy/systemd/$pkg.service" "$stage/lib/systemd/system/$pkg.service"
    install -D -m 0640 "$root/deploy/config/$svc.toml" "$stage/etc/ntpscope/$svc.toml"
    install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/$pkg/README.md"
    install -D -m 0644 "$root/ARCHITECTURE.md" "$stage/usr/share/doc/$pkg/ARCHITECTURE.md"
    cat > "$stage/usr/share/doc/$pkg/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ntpscope

Files: *
Copyright: ntpscope developers
License: MIT or Apache-2.0
EOF
    if [ "$svc" = sink ]; then
        install -D -m 0644 "$root/deploy/nats/nats-server.conf" "$stage/usr/share/doc/$pkg/examples/nats-server.conf"
        if [ -x "$bin/ntpscope-migrate" ]; then
            install -D -m 0755 "$bin/ntpscope-migrate" "$stage/usr/bin/ntpscope-migrate"
        fi
    fi
    mkdir -p "$stage/DEBIAN"
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    cat > "$stage/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: ntpscope developers <ntpscope@localhost>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Homepage: file:///usr/share/doc/$pkg/README.md
Description: ntpscope $svc: $summary
 ntpscope shows NTP server operators who their clients are, how well each one
 is answered and who abuses the service, across a fleet of servers.
EOF
    echo "/etc/ntpscope/$svc.toml" > "$stage/DEBIAN/conffiles"
    cat > "$stage/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
    if ! getent passwd ntpscope >/dev/null; then
        adduser --system --group --home /var/lib/ntpscope --no-create-home --quiet ntpscope
    fi
    chgrp ntpscope /etc/ntpscope/$svc.toml
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    echo "$pkg: edit /etc/ntpscope/$svc.toml, then: systemctl enable --now $pkg"
fi
EOF
    cat > "$stage/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
    systemctl stop $pkg.service 2>/dev/null || true
fi
EOF
    cat > "$stage/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
EOF
    chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
    dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$stage" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
    rm -rf "$stage"
    trap - EXIT
    echo "$out/${pkg}_${version}_${arch}.deb"
}

build capture "libc6, libpcap0.8, adduser" "capture agent (libpcap to NATS JetStream)"
build sink "libc6, adduser" "JetStream consumer keeping per-client history in SQLite or PostgreSQL"
build api "libc6, adduser" "REST API with OpenAPI and Swagger UI"
