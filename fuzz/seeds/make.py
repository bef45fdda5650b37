#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target to corpus/<target>/seed-*.

The packets are the seed article's: pod 10.20.105.215 (node 172.16.36.5)
and pod 10.20.42.31 (node 172.16.35.4), Calico IPIP. Each target's first
bytes are its parameters (see the target's doc comment). Run from fuzz/:
`seeds/make.py`; the files are kept in git with the minimised corpus.
"""
import json
import os
import struct

POD_A, POD_B = bytes([10, 20, 105, 215]), bytes([10, 20, 42, 31])
NODE_A, NODE_B = bytes([172, 16, 36, 5]), bytes([172, 16, 35, 4])


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, tos=0, ttl=63, df=True, ident=0xB5C3, options=b""):
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 4 * ihl + len(payload), ident,
                    0x4000 if df else 0, ttl, proto, 0, src, dst) + options
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def l4(src, dst, proto, seg, at):
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    seg = seg[:at] + b"\0\0" + seg[at + 2:]
    return seg[:at] + struct.pack("!H", csum(pseudo + seg)) + seg[at + 2:]


def ping(src=POD_A, dst=POD_B, tos=0, seq=1):
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, seq) + bytes(range(56))
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    return ipv4(src, dst, 1, icmp, tos=tos)


def tcp(seq, payload, flags=0x10, src=POD_A, dst=POD_B, sport=40000, dport=5201):
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, 0x0A0B0C0D, 5 << 4, flags, 512, 0, 0)
    return ipv4(src, dst, 6, l4(src, dst, 6, seg + payload, 16))


def udp(payload, src=POD_A, dst=POD_B):
    seg = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    return ipv4(src, dst, 17, l4(src, dst, 17, seg, 6))


def outer(inner, tos=0, options=b""):
    return ipv4(NODE_A, NODE_B, 4, inner, tos=tos, ttl=64, df=False, options=options)


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# decap: a mode byte (0: as is), then the outer packet.
write("decap", "ping", b"\0" + outer(ping()))
write("decap", "tcp", b"\0" + outer(tcp(1, bytes(1000))))
write("decap", "ecn-ce-over-ect0", b"\0" + outer(ping(tos=0x02), tos=0x03))
write("decap", "outer-options", b"\0" + outer(ping(), options=b"\x01\x01\x01\x00"))
write("decap", "nested", b"\0" + outer(ipv4(NODE_A, NODE_B, 4, ping())))
write("decap", "frag-needed", b"\0" + ipv4(NODE_B, NODE_A, 1, struct.pack("!BBHHH", 3, 4, 0, 0, 1400)
                                            + outer(ping())[:28], df=False))

# encap: 12 parameter bytes (flags, fixed TTL, MTU, tunnel MTU, next hop,
# headroom selector, spare), then the inner packet.
def encap_params(flags=0, ttl=0, mtu=1480, tmtu=1480, headroom=1):
    return struct.pack("!BBHH4sBB", flags, ttl, mtu, tmtu, NODE_B, headroom, 0)


write("encap", "ping", encap_params() + ping())
write("encap", "tcp-fixed-ttl", encap_params(flags=0x04, ttl=64) + tcp(1, bytes(1400)))
write("encap", "too-big-df", encap_params(mtu=1000) + tcp(1, bytes(1400)))
write("encap", "pmtudisc-tos", encap_params(flags=0x03) + ping(tos=0xB9))
write("encap", "ce", encap_params() + ping(tos=0x03))
write("encap", "options-headroom", encap_params(headroom=3)
      + ipv4(POD_A, POD_B, 17, bytes(16), options=b"\x94\x04\x00\x00"))

# tun_write: flags (bit 0 UDP GSO, bit 1 fix IPv4, bit 2 fix TCP/UDP), MTU,
# then packets: length (2 bytes) and bytes, or 0x80 | n: the next of the flow.
def pkt(p):
    return struct.pack("!H", len(p)) + p


write("tun_write", "tcp-flow", struct.pack("!BH", 0, 1480)
      + pkt(tcp(1000, bytes(1000))) + b"\x80\x80\x80" + bytes([0xC0 | 10]))
write("tun_write", "tcp-psh", struct.pack("!BH", 0, 1480)
      + pkt(tcp(7, bytes(500), flags=0x18)) + b"\x80" + pkt(ping()) + b"\x80")
write("tun_write", "udp-flow", struct.pack("!BH", 1, 1480) + pkt(udp(bytes(1200))) + b"\x80\x80\xc8")
write("tun_write", "super-packet", struct.pack("!BH", 0, 1480)
      + pkt(tcp(1, bytes(1440))) + pkt(tcp(1441, bytes(3000))) + pkt(udp(bytes(2000))))
write("tun_write", "two-flows", struct.pack("!BH", 0, 1480)
      + pkt(tcp(1, bytes(800))) + pkt(tcp(1, bytes(800), sport=40001)) + b"\x80"
      + pkt(udp(bytes(100))))

# config: the example file, a generated node config, the smallest one.
write("config", "example", open("../examples/tunl.toml", "rb").read())
write("config", "testbed", b"""# tunl config for node1.sit (generated)
[tunnel]
name = "tunl0"
local = "172.16.35.4"
address = "10.20.42.0/32"
blocks = ["10.20.42.0/26"]

[[route]]
prefix = "10.20.105.192/26"
via = "172.16.36.5"

[[route]]
prefix = "10.20.1.0/24"
via = "172.16.36.6"

[security]
allow = ["172.16.0.0/16"]

[dataplane]
workers = 2
offload = true
packet_tx = false
busy_poll_us = 50
tx_queue_len = 1000
socket_buffer = 8388608
icmp_rate = 100

[control]
socket = "/tmp/tunl-x/node1.sit.sock"

[metrics]
listen = "127.0.0.1:9099"
""")
write("config", "minimal", b'[tunnel]\nlocal = "172.16.35.4"\nttl = 64\nmtu = 1400\n')
write("config", "errors", b'[tunnel]\nlocal = "172.16.35.4/32"\nmut = 1400\n[[route]]\n'
      b'prefix = "10.20.105.193/26"\nvia = "10.20.105.194"\n[tunel]\n')

# control: one request of each kind, as the CLI sends them.
route = {"prefix": "10.20.105.192/26", "via": "172.16.36.5"}
for name, req in [
    ("route_add", {"cmd": "route_add", **route}),
    ("route_del", {"cmd": "route_del", "prefix": "10.20.105.192/26"}),
    ("route_list", {"cmd": "route_list"}),
    ("route_replace", {"cmd": "route_replace", "routes": [route, {"prefix": "10.20.1.0/24", "via": "172.16.36.6"}]}),
    ("route_replace_empty", {"cmd": "route_replace", "routes": [], "allow_empty": True}),
    ("status", {"cmd": "status"}),
    ("stats", {"cmd": "stats"}),
]:
    write("control", name, json.dumps(req).encode() + b"\n")
write("control", "unknown", b'{"cmd":"reboot"}\n')

# routes: each form of a routes file.
write("routes", "lines", b"# routes of node1\n10.20.105.192/26 via 172.16.36.5\n"
      b"10.20.1.0/24   via 172.16.36.6  # the second node\n\n")
write("routes", "array", json.dumps([route]).encode())
write("routes", "object", json.dumps({"routes": [route]}, indent=2).encode())
