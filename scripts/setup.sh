#!/usr/bin/env bash
# Installs what tunl's lab, tests and benchmarks need on a Debian/Ubuntu host:
# iproute2 (ip netns, veth, vxlan), ping, iperf3, tcpdump, ethtool, setpriv
# (util-linux, for the capability test), BIRD 2 (bird2, for `tunl lab --bgp`
# and the BGP tests, which run their own BIRD instances in namespaces), and a
# C toolchain for crates with build scripts. Idempotent; run as root or with
# sudo.
set -euo pipefail

packages=(iproute2 iputils-ping iperf3 tcpdump ethtool procps util-linux bird2 build-essential pkg-config)

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
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
[ -e /dev/net/tun ] || { echo "setup: /dev/net/tun is missing (TUN support is required)" >&2; exit 1; }
echo "setup: ok" >&2
