"""emunet.render: each Linux tool's lines, table-driven; malformed input never raises."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

import pytest

from emunet.packets.mac import MAC
from emunet.render import (
    bridge_fdb,
    ip_addr,
    ip_link,
    ip_neigh_line,
    ping_icmp_error,
    tcpdump_line,
)


def _ip(proto: int, body: bytes, frag: int = 0) -> bytes:
    src, dst = bytes([10, 244, 1, 2]), bytes([10, 244, 2, 2])
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, frag, 64, proto, 0, src, dst)
    return head + body


def _eth(ethertype: int, payload: bytes) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", ethertype) + payload


_INNER_UDP = _ip(17, struct.pack("!HHHH", 1000, 53, 8, 0))
_ARP = struct.pack(
    "!HHBBH6s4s6s4s", 1, 0x800, 6, 4, 1, b"\x02" * 6, bytes([10, 0, 0, 1]), b"\0" * 6,
    bytes([10, 0, 0, 2]),
)  # fmt: skip

PACKETS = [
    (
        _ip(1, struct.pack("!BBHHH", 8, 0, 0, 1, 2) + b"x" * 56),
        "IP 10.244.1.2 > 10.244.2.2: ICMP echo request, id 1, seq 2, length 64",
    ),
    (
        _ip(1, struct.pack("!BBHI", 3, 3, 0, 0) + _INNER_UDP),
        # sic: the quoted datagram's source port (tcpdump prints its destination port,
        # 53); kept as pod-shell has always printed it (issue 12: no behaviour change)
        "IP 10.244.1.2 > 10.244.2.2: ICMP 10.244.2.2 udp port 1000 unreachable, length 36",
    ),
    (
        _ip(1, struct.pack("!BBHI", 3, 1, 0, 0) + _INNER_UDP),
        "IP 10.244.1.2 > 10.244.2.2: ICMP 10.244.2.2 unreachable "
        "(destination host unreachable), length 36",
    ),
    (
        _ip(1, struct.pack("!BBHI", 11, 0, 0, 0) + _INNER_UDP),
        "IP 10.244.1.2 > 10.244.2.2: ICMP time exceeded in-transit, length 36",
    ),
    (
        _ip(17, struct.pack("!HHHH", 1, 2, 12, 0) + b"abcd"),
        "IP 10.244.1.2.1 > 10.244.2.2.2: UDP, length 4",
    ),
    (
        _ip(6, struct.pack("!HHIIBBHHH", 1, 80, 5, 6, 0x50, 0x12, 100, 0, 0) + b"hi"),
        "IP 10.244.1.2.1 > 10.244.2.2.80: Flags [S.], seq 5:7, ack 6, win 100, length 2",
    ),
    (_ip(17, b"x" * 20, frag=0x2005), "IP 10.244.1.2 > 10.244.2.2: ip-proto-17"),
    (_ip(47, b"zz"), "IP 10.244.1.2 > 10.244.2.2: ip-proto-47 2"),
]


@pytest.mark.parametrize(("packet", "line"), PACKETS)
def test_tcpdump_line(packet: bytes, line: str) -> None:
    assert tcpdump_line(packet, l2=False) == line
    assert tcpdump_line(_eth(0x0800, packet)) == line


def test_tcpdump_line_arp_and_other_ethertypes() -> None:
    assert tcpdump_line(_eth(0x0806, _ARP)) == (
        "ARP, Request who-has 10.0.0.2 tell 10.0.0.1, length 28"
    )
    assert tcpdump_line(_eth(0x86DD, b"x" * 40)) == "ethertype 0x86dd, length 54"


def test_tcpdump_verbose_puts_the_ip_header_first() -> None:
    assert tcpdump_line(PACKETS[4][0], l2=False, verbose=True) == (
        "IP (tos 0x0, ttl 64, id 1, offset 0, flags [none], proto UDP (17), length 32) "
        "10.244.1.2.1 > 10.244.2.2.2: UDP, length 4"
    )
    assert tcpdump_line(PACKETS[6][0], l2=False, verbose=True).startswith(
        "IP (tos 0x0, ttl 64, id 1, offset 40, flags [+], proto UDP (17), length 40) "
    )


@pytest.mark.parametrize("frame", [_eth(0x0800, p) for p, _ in PACKETS] + [_eth(0x0806, _ARP)])
def test_every_truncated_prefix_is_one_line(frame: bytes) -> None:
    for cut in range(len(frame)):
        for l2, data in ((True, frame[:cut]), (False, frame[14:cut])):
            line = tcpdump_line(data, l2=l2, verbose=True)
            assert "\n" not in line and line


def test_ping_icmp_error() -> None:
    assert ping_icmp_error(3, 1, 0) == "Destination Host Unreachable"
    assert ping_icmp_error(3, 4, 1400) == "Frag needed and DF set (mtu = 1400)"
    assert ping_icmp_error(11, 0, 0) == "Time to live exceeded"
    assert ping_icmp_error(3, 7, 0) == "Dest Unreachable, Bad Code: 7"


@dataclass
class _Link:
    name: str
    kind: str
    index: int
    mtu: int = 1500
    up: bool = True
    mac: MAC | None = None
    addresses: list[IPv4Interface] = field(default_factory=list)
    peer: _Link | None = None


def test_ip_addr_and_link() -> None:
    lo = _Link("lo", "loopback", 1, 65536, addresses=[IPv4Interface("127.0.0.1/8")])
    eth0 = _Link("eth0", "veth", 3, 1450, mac=MAC(b"\x0a\x58\x0a\xf4\x01\x02"))
    eth0.addresses.append(IPv4Interface("10.244.1.2/24"))
    eth0.peer = _Link("veth1", "veth", 7)
    assert ip_addr([lo, eth0]) == [
        "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default "
        "qlen 1000",
        "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
        "    inet 127.0.0.1/8 scope host lo",
        "       valid_lft forever preferred_lft forever",
        "3: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP "
        "group default qlen 1000",
        "    link/ether 0a:58:0a:f4:01:02 brd ff:ff:ff:ff:ff:ff link-netnsid 0",
        "    inet 10.244.1.2/24 brd 10.244.1.255 scope global eth0",
        "       valid_lft forever preferred_lft forever",
    ]
    assert ip_link([eth0]) == [
        "3: eth0@if7: mtu 1450 state UP",
        "    link/ether 0a:58:0a:f4:01:02 brd ff:ff:ff:ff:ff:ff",
    ]


def test_ip_neigh_and_bridge_fdb() -> None:
    mac = MAC(b"\x0a\x58\x0a\xf4\x01\x02")
    assert ip_neigh_line(IPv4Address("10.244.1.1"), "eth0", mac, "REACHABLE") == (
        "10.244.1.1 dev eth0 lladdr 0a:58:0a:f4:01:02 REACHABLE"
    )
    assert ip_neigh_line(IPv4Address("10.244.1.9"), "eth0", None, "FAILED") == (
        "10.244.1.9 dev eth0 FAILED"
    )
    assert bridge_fdb([(mac, "veth1", 12.4, False), (mac, "cni0", 0.0, True)]) == [
        "0a:58:0a:f4:01:02 dev veth1 master cni0 age 12s",
        "0a:58:0a:f4:01:02 dev cni0 master cni0 permanent",
    ]
