#!/usr/bin/env bash
# Installs what tunl's lab, tests and benchmarks need on a Debian/Ubuntu host:
# iproute2 (ip netns, veth, vxlan), ping, iperf3, tcpdump, ethtool, setpriv
# and unshare (util-linux, for the capability tests), BIRD 2 (bird2, for
# `tunl lab --bgp` and the BGP tests, which run their own BIRD instances in
# namespaces), a C toolchain for crates with build scripts, and the checkers
# the tests run: promtool (package prometheus) and the Prometheus Python
# client's OpenMetrics parser (python3-prometheus-client) for the metrics
# endpoint, systemd-analyze (systemd) for the units, cargo-deb and dpkg-deb
# for the .deb; and clang with libbpf-dev for the XDP program (io/bpf/,
# compiled by io/build.rs). Idempotent; run as root or with sudo.
set -euo pipefail

packages=(iproute2 iputils-ping iperf3 tcpdump ethtool procps util-linux bird2 build-essential pkg-config
  prometheus python3-prometheus-client systemd dpkg clang libbpf-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Only promtool is wanted from the prometheus package: do not leave a
  # Prometheus server running that this script started.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    echo "setup: prometheus.service disabled (only promtool is used)" >&2
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
# cargo-deb builds the .deb (scripts/deb, tests/deb.rs).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deb" >&2
  cargo install cargo-deb --locked
fi
[ -e /dev/net/tun ] || { echo "setup: /dev/net/tun is missing (TUN support is required)" >&2; exit 1; }
echo "setup: ok" >&2
