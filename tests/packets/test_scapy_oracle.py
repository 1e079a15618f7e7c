"""External oracle 1 (issue 2): scapy and emunet agree on every header kind.

Each case describes one frame twice, once with emunet's builders and once with
scapy's. Three checks per case:

* the two builders produce the same bytes;
* scapy's bytes parse in emunet (checksums verified) to the fields scapy
  reports for them;
* emunet's bytes dissect in scapy to the fields emunet reports, and scapy,
  asked to recompute every length and checksum, rebuilds the frame byte for
  byte.

Fields are compared as flat ``{"layer.field": value}`` views, one written
against emunet's parsers and one against scapy's dissectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import pytest
from scapy.layers.inet import (
    ICMP,
    IP,
    TCP,
    UDP,
    ICMPerror,
    IPerror,
    IPOption_Router_Alert,
    IPOption_RR,
    TCPerror,
    UDPerror,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from emunet.errors import MalformedFrame
from emunet.packets import arp, ethernet, icmp, ipv4, tcp, udp
from emunet.packets.mac import MAC

MAC_A = "02:42:0a:f4:01:02"
MAC_B = "02:42:0a:f4:02:03"
IP_A = "10.244.1.2"
IP_B = "10.244.2.3"
ROUTER = "10.244.1.1"
A, B, R = IPv4Address(IP_A), IPv4Address(IP_B), IPv4Address(ROUTER)

View = dict[str, Any]


# ---------------------------------------------------------------- emunet side


def e_eth(payload: bytes, ethertype: int = ethernet.ETH_P_IP, **kw: Any) -> bytes:
    return ethernet.build(ethernet.EthernetHeader(MAC(MAC_B), MAC(MAC_A), ethertype, **kw), payload)


def e_ip(src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes, **kw: Any) -> bytes:
    return ipv4.build(ipv4.IPv4Header(src, dst, proto, **kw), payload)


def e_udp(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, data: bytes) -> bytes:
    seg = udp.build(udp.UDPHeader(sport, dport), data, src, dst)
    return e_ip(src, dst, ipv4.PROTO_UDP, seg, identification=1, df=True)


def e_tcp(src: IPv4Address, dst: IPv4Address, hdr: tcp.TCPHeader, data: bytes = b"") -> bytes:
    return e_ip(src, dst, ipv4.PROTO_TCP, tcp.build(hdr, data, src, dst), identification=2)


def _ip_view(h: ipv4.IPv4Header, prefix: str) -> View:
    return {
        f"{prefix}.ihl": h.header_length // 4,
        f"{prefix}.dscp": h.dscp,
        f"{prefix}.ecn": h.ecn,
        f"{prefix}.len": h.total_length,
        f"{prefix}.id": h.identification,
        f"{prefix}.df": h.df,
        f"{prefix}.mf": h.mf,
        f"{prefix}.frag": h.fragment_offset,
        f"{prefix}.ttl": h.ttl,
        f"{prefix}.proto": h.protocol,
        f"{prefix}.chksum": h.checksum,
        f"{prefix}.src": str(h.src),
        f"{prefix}.dst": str(h.dst),
        f"{prefix}.options": h.options,
    }


def _tcp_options(opts: tuple[tcp.Option, ...]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for o in opts:
        if isinstance(o, tcp.NOP):
            out.append(("NOP", None))
        elif isinstance(o, tcp.MSS):
            out.append(("MSS", o.value))
        elif isinstance(o, tcp.WindowScale):
            out.append(("WScale", o.shift))
        elif isinstance(o, tcp.SACKPermitted):
            out.append(("SAckOK", b""))
        elif isinstance(o, tcp.SACK):
            out.append(("SAck", tuple(x for block in o.blocks for x in block)))
        elif isinstance(o, tcp.Timestamps):
            out.append(("Timestamp", (o.tsval, o.tsecr)))
        else:
            out.append((str(o.kind), o.data))
    return out


def _quoted_l4_view(proto: int, data: bytes) -> View:
    """The 8 quoted L4 bytes, read with emunet's L4 header structs."""
    if proto == ipv4.PROTO_UDP:
        sport, dport, length, csum = udp.HEADER.unpack_from(data)
        return {
            "q.udp.sport": sport,
            "q.udp.dport": dport,
            "q.udp.len": length,
            "q.udp.chksum": csum,
        }
    if proto == ipv4.PROTO_TCP:
        sport, dport, seq = tcp.HEADER.unpack_from(data + bytes(12))[:3]
        return {"q.tcp.sport": sport, "q.tcp.dport": dport, "q.tcp.seq": seq}
    m = icmp.parse(data)
    return {
        "q.icmp.type": m.type,
        "q.icmp.code": m.code,
        "q.icmp.chksum": m.checksum,
        "q.icmp.id": m.identifier,
        "q.icmp.seq": m.sequence,
    }


def emunet_view(raw: bytes) -> View:
    """Everything emunet's parsers say about ``raw``, checksums verified."""
    eth, off = ethernet.parse(raw)
    v: View = {"eth.dst": str(eth.dst), "eth.src": str(eth.src), "eth.type": eth.ethertype}
    if eth.vlan is not None:
        v |= {"vlan.vid": eth.vlan.vid, "vlan.pcp": eth.vlan.pcp, "vlan.dei": eth.vlan.dei}
    if eth.ethertype == ethernet.ETH_P_ARP:
        a = arp.parse(raw, off)
        return v | {
            "arp.op": a.op,
            "arp.sha": str(a.sender_mac),
            "arp.spa": str(a.sender_ip),
            "arp.tha": str(a.target_mac),
            "arp.tpa": str(a.target_ip),
        }
    ip, payload = ipv4.parse(raw, off, verify_checksum=True)
    v |= _ip_view(ip, "ip")
    if ip.is_fragment:
        return v | {"ip.payload": bytes(payload)}
    if ip.protocol == ipv4.PROTO_UDP:
        u, data = udp.parse(payload, verify_with=(ip.src, ip.dst))
        return v | {
            "udp.sport": u.sport,
            "udp.dport": u.dport,
            "udp.len": u.length,
            "udp.chksum": u.checksum,
            "udp.payload": bytes(data),
        }
    if ip.protocol == ipv4.PROTO_TCP:
        t, data = tcp.parse(payload, verify_with=(ip.src, ip.dst))
        return v | {
            "tcp.sport": t.sport,
            "tcp.dport": t.dport,
            "tcp.seq": t.seq,
            "tcp.ack": t.ack,
            "tcp.dataofs": t.data_offset // 4,
            "tcp.flags": t.flags,
            "tcp.window": t.window,
            "tcp.chksum": t.checksum,
            "tcp.urgptr": t.urgent,
            "tcp.options": _tcp_options(t.options),
            "tcp.payload": bytes(data),
        }
    assert ip.protocol == ipv4.PROTO_ICMP
    m = icmp.parse(payload, verify_checksum=True)
    v |= {"icmp.type": m.type, "icmp.code": m.code, "icmp.chksum": m.checksum}
    if not m.is_error:
        return v | {"icmp.id": m.identifier, "icmp.seq": m.sequence, "icmp.payload": m.payload}
    v["icmp.rest"] = m.rest
    if m.type == icmp.DEST_UNREACH and m.code == icmp.FRAG_NEEDED:
        v["icmp.mtu"] = m.next_hop_mtu
    qip, rest = icmp.parse_quote(m.payload)
    return v | _ip_view(qip, "q.ip") | _quoted_l4_view(qip.protocol, bytes(rest))


# ----------------------------------------------------------------- scapy side


def _s_ip_view(ip: Packet, prefix: str) -> View:
    return {
        f"{prefix}.ihl": ip.ihl,
        f"{prefix}.dscp": ip.tos >> 2,
        f"{prefix}.ecn": ip.tos & 3,
        f"{prefix}.len": ip.len,
        f"{prefix}.id": ip.id,
        f"{prefix}.df": bool(ip.flags.DF),
        f"{prefix}.mf": bool(ip.flags.MF),
        f"{prefix}.frag": ip.frag,
        f"{prefix}.ttl": ip.ttl,
        f"{prefix}.proto": ip.proto,
        f"{prefix}.chksum": ip.chksum,
        f"{prefix}.src": ip.src,
        f"{prefix}.dst": ip.dst,
        f"{prefix}.options": b"".join(bytes(o) for o in ip.options),
    }


def _s_tcp_options(opts: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for name, value in opts:
        if name == "EOL":
            break
        out.append((name, value))
    return out


def scapy_view(raw: bytes) -> View:
    """Everything scapy's dissectors say about ``raw``."""
    p = Ether(raw)
    v: View = {"eth.dst": p.dst, "eth.src": p.src, "eth.type": p.type}
    layer = p.payload
    if isinstance(layer, Dot1Q):
        v |= {"vlan.vid": layer.vlan, "vlan.pcp": layer.prio, "vlan.dei": bool(layer.dei)}
        v["eth.type"] = layer.type
        layer = layer.payload
    if isinstance(layer, ARP):
        return v | {
            "arp.op": layer.op,
            "arp.sha": layer.hwsrc,
            "arp.spa": layer.psrc,
            "arp.tha": layer.hwdst,
            "arp.tpa": layer.pdst,
        }
    ip = layer
    assert isinstance(ip, IP), ip
    v |= _s_ip_view(ip, "ip")
    if ip.flags.MF or ip.frag:
        return v | {"ip.payload": bytes(ip.payload)}
    l4 = ip.payload
    if type(l4) is UDP:
        return v | {
            "udp.sport": l4.sport,
            "udp.dport": l4.dport,
            "udp.len": l4.len,
            "udp.chksum": l4.chksum,
            "udp.payload": bytes(l4.payload),
        }
    if type(l4) is TCP:
        return v | {
            "tcp.sport": l4.sport,
            "tcp.dport": l4.dport,
            "tcp.seq": l4.seq,
            "tcp.ack": l4.ack,
            "tcp.dataofs": l4.dataofs,
            "tcp.flags": int(l4.flags),
            "tcp.window": l4.window,
            "tcp.chksum": l4.chksum,
            "tcp.urgptr": l4.urgptr,
            "tcp.options": _s_tcp_options(l4.options),
            "tcp.payload": bytes(l4.payload),
        }
    assert type(l4) is ICMP, l4
    v |= {"icmp.type": l4.type, "icmp.code": l4.code, "icmp.chksum": l4.chksum}
    if l4.type in (0, 8):
        return v | {"icmp.id": l4.id, "icmp.seq": l4.seq, "icmp.payload": bytes(l4.payload)}
    low = l4.nexthopmtu if l4.type == 3 else l4.unused
    v["icmp.rest"] = (l4.reserved << 24) | (l4.length << 16) | low
    if l4.type == 3 and l4.code == 4:
        v["icmp.mtu"] = l4.nexthopmtu
    q = l4.payload
    assert isinstance(q, IPerror), q
    v |= _s_ip_view(q, "q.ip")
    ql4 = q.payload
    if isinstance(ql4, UDPerror):
        return v | {
            "q.udp.sport": ql4.sport,
            "q.udp.dport": ql4.dport,
            "q.udp.len": ql4.len,
            "q.udp.chksum": ql4.chksum,
        }
    if isinstance(ql4, TCPerror):
        return v | {"q.tcp.sport": ql4.sport, "q.tcp.dport": ql4.dport, "q.tcp.seq": ql4.seq}
    assert isinstance(ql4, ICMPerror), ql4
    return v | {
        "q.icmp.type": ql4.type,
        "q.icmp.code": ql4.code,
        "q.icmp.chksum": ql4.chksum,
        "q.icmp.id": ql4.id,
        "q.icmp.seq": ql4.seq,
    }


def scapy_recomputed(raw: bytes) -> bytes:
    """``raw`` rebuilt by scapy after deleting every length and checksum it can fill.

    Quoted headers inside ICMP errors keep theirs: they are the offending
    packet's, not ours; so do the L4 bytes of a fragment. A UDP checksum of 0
    ("none") is kept as sent.
    """
    p = Ether(raw)
    layer: Packet = p
    while layer:
        kind = type(layer)
        if kind is IP:
            fragment = layer.flags.MF or layer.frag
            del layer.chksum, layer.len, layer.ihl
            if fragment:  # a fragment's L4 bytes are payload, not a header to refill
                break
        elif kind is ICMP:
            del layer.chksum
        elif kind is TCP:
            del layer.chksum, layer.dataofs
        elif kind is UDP:
            del layer.len
            if layer.chksum != 0:
                del layer.chksum
        if kind in (IPerror, ICMPerror, UDPerror, TCPerror):
            break
        layer = layer.payload
    return bytes(p)


# ----------------------------------------------------------------- the table


def s_eth() -> Packet:
    pkt: Packet = Ether(dst=MAC_B, src=MAC_A)
    return pkt


def s_ip(src: str = IP_A, dst: str = IP_B, **kw: Any) -> Packet:
    pkt: Packet = IP(src=src, dst=dst, **kw)
    return pkt


DNS_QUERY = b"\x12\x34\x01\x00\x00\x01" + bytes(6) + b"\x07example\x03com\x00\x00\x01\x00\x01"
PING_DATA = bytes(range(56))
OFFENDING_UDP = e_udp(A, B, 40000, 53, DNS_QUERY)
OFFENDING_TCP_HDR = tcp.TCPHeader(
    40001, 80, seq=0x01020304, flags=tcp.SYN, options=(tcp.MSS(1460),)
)
OFFENDING_TCP = e_tcp(A, B, OFFENDING_TCP_HDR)
OFFENDING_PING = e_ip(
    A, B, ipv4.PROTO_ICMP, icmp.echo(icmp.ECHO_REQUEST, 77, 3, PING_DATA), ttl=1, identification=9
)
SYN_OPTIONS: tuple[tcp.Option, ...] = (
    tcp.MSS(1460),
    tcp.SACKPermitted(),
    tcp.Timestamps(123456789, 0),
    tcp.NOP(),
    tcp.WindowScale(7),
)
ACK_OPTIONS: tuple[tcp.Option, ...] = (
    tcp.NOP(),
    tcp.NOP(),
    tcp.Timestamps(0xFFFFFFF0, 42),
    tcp.NOP(),
    tcp.NOP(),
    tcp.SACK(((1000, 2000), (3000, 0xFFFFFFFF))),
)
S_OFFENDING_UDP = (
    s_ip(id=1, flags="DF") / UDP(sport=40000, dport=53) / DNS_QUERY  # same as OFFENDING_UDP
)
S_OFFENDING_TCP = s_ip(id=2, flags=0) / TCP(
    sport=40001, dport=80, seq=0x01020304, ack=0, flags="S", window=65535, options=[("MSS", 1460)]
)
S_OFFENDING_PING = s_ip(ttl=1, id=9, flags=0) / ICMP(type=8, id=77, seq=3) / PING_DATA
# scapy's "router alert" and "record route with one empty slot", then EOL padding
IP_OPTIONS = b"\x94\x04\x00\x00" + b"\x07\x07\x04\x00\x00\x00\x00" + b"\x00"


@dataclass(frozen=True)
class Case:
    id: str
    emunet: Callable[[], bytes]
    scapy: Callable[[], Packet]


CASES = [
    Case(
        "ethernet-ipv4-udp",
        lambda: e_eth(OFFENDING_UDP),
        lambda: s_eth() / S_OFFENDING_UDP,
    ),
    Case(
        "ethernet-802.1q",
        lambda: e_eth(OFFENDING_UDP, vlan=ethernet.VlanTag(vid=100, pcp=5, dei=True)),
        lambda: s_eth() / Dot1Q(vlan=100, prio=5, dei=1) / S_OFFENDING_UDP,
    ),
    Case(
        "ethernet-802.1q-vid-4095-pcp-0",
        lambda: e_eth(OFFENDING_TCP, vlan=ethernet.VlanTag(vid=4095)),
        lambda: s_eth() / Dot1Q(vlan=4095, prio=0, dei=0) / S_OFFENDING_TCP,
    ),
    Case(
        "arp-request",
        lambda: ethernet.build(
            ethernet.EthernetHeader(MAC.BROADCAST, MAC(MAC_A), ethernet.ETH_P_ARP),
            arp.build(arp.ARPPacket(arp.REQUEST, MAC(MAC_A), A, MAC.ZERO, R)),
        ),
        lambda: (
            Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC_A)
            / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, hwdst="00:00:00:00:00:00", pdst=ROUTER)
        ),
    ),
    Case(
        "arp-reply",
        lambda: e_eth(
            arp.build(arp.ARPPacket(arp.REPLY, MAC(MAC_A), R, MAC(MAC_B), B)),
            ethernet.ETH_P_ARP,
        ),
        lambda: s_eth() / ARP(op=2, hwsrc=MAC_A, psrc=ROUTER, hwdst=MAC_B, pdst=IP_B),
    ),
    Case(
        "ipv4-options-dscp-ecn-df",
        lambda: e_eth(
            e_ip(
                A,
                B,
                ipv4.PROTO_UDP,
                udp.build(udp.UDPHeader(5353, 5353), b"hi", A, B),
                ttl=1,
                identification=0xBEEF,
                df=True,
                dscp=46,
                ecn=1,
                options=IP_OPTIONS,
            )
        ),
        lambda: (
            s_eth()
            / s_ip(
                ttl=1,
                id=0xBEEF,
                flags="DF",
                tos=(46 << 2) | 1,
                options=[IPOption_Router_Alert(), IPOption_RR(routers=["0.0.0.0"])],
            )
            / UDP(sport=5353, dport=5353)
            / b"hi"
        ),
    ),
    Case(
        "ipv4-first-fragment-mf",
        lambda: e_eth(
            e_ip(A, B, ipv4.PROTO_UDP, OFFENDING_UDP[20:44], identification=0x4242, mf=True)
        ),
        lambda: s_eth() / s_ip(id=0x4242, flags="MF", proto=17) / OFFENDING_UDP[20:44],
    ),
    Case(
        "ipv4-last-fragment-offset-185",
        lambda: e_eth(
            e_ip(A, B, ipv4.PROTO_UDP, bytes(range(37)), identification=0x4242, fragment_offset=185)
        ),
        lambda: s_eth() / s_ip(id=0x4242, flags=0, frag=185, proto=17) / bytes(range(37)),
    ),
    Case(
        "ipv4-ecn-ce-ttl-255",
        lambda: e_eth(
            e_ip(B, A, ipv4.PROTO_UDP, udp.build(udp.UDPHeader(1, 2), b"", B, A), ttl=255, ecn=3)
        ),
        lambda: s_eth() / s_ip(IP_B, IP_A, ttl=255, id=0, flags=0, tos=3) / UDP(sport=1, dport=2),
    ),
    Case(
        "icmp-echo-request",
        lambda: e_eth(OFFENDING_PING),
        lambda: s_eth() / S_OFFENDING_PING,
    ),
    Case(
        "icmp-echo-reply",
        lambda: e_eth(
            e_ip(B, A, ipv4.PROTO_ICMP, icmp.echo(icmp.ECHO_REPLY, 0xFFFF, 0xFFFE, PING_DATA))
        ),
        lambda: (
            s_eth()
            / s_ip(IP_B, IP_A, id=0, flags=0)
            / ICMP(type=0, id=0xFFFF, seq=0xFFFE)
            / PING_DATA
        ),
    ),
    Case(
        "icmp-net-unreachable",
        lambda: e_eth(
            e_ip(
                R,
                A,
                ipv4.PROTO_ICMP,
                icmp.error(icmp.DEST_UNREACH, icmp.NET_UNREACH, OFFENDING_UDP),
            )
        ),
        lambda: (
            s_eth()
            / s_ip(ROUTER, IP_A, id=0, flags=0)
            / ICMP(type=3, code=0)
            / bytes(S_OFFENDING_UDP)[:28]
        ),
    ),
    Case(
        "icmp-host-unreachable",
        lambda: e_eth(
            e_ip(
                R,
                A,
                ipv4.PROTO_ICMP,
                icmp.error(icmp.DEST_UNREACH, icmp.HOST_UNREACH, OFFENDING_TCP),
            )
        ),
        lambda: (
            s_eth()
            / s_ip(ROUTER, IP_A, id=0, flags=0)
            / ICMP(type=3, code=1)
            / bytes(S_OFFENDING_TCP)[:28]
        ),
    ),
    Case(
        "icmp-port-unreachable",
        lambda: e_eth(
            e_ip(
                B,
                A,
                ipv4.PROTO_ICMP,
                icmp.error(icmp.DEST_UNREACH, icmp.PORT_UNREACH, OFFENDING_UDP),
            )
        ),
        lambda: (
            s_eth()
            / s_ip(IP_B, IP_A, id=0, flags=0)
            / ICMP(type=3, code=3)
            / bytes(S_OFFENDING_UDP)[:28]
        ),
    ),
    Case(
        "icmp-frag-needed-mtu-1472",
        lambda: e_eth(
            e_ip(
                R,
                A,
                ipv4.PROTO_ICMP,
                icmp.error(icmp.DEST_UNREACH, icmp.FRAG_NEEDED, OFFENDING_UDP, mtu=1472),
            )
        ),
        lambda: (
            s_eth()
            / s_ip(ROUTER, IP_A, id=0, flags=0)
            / ICMP(type=3, code=4, nexthopmtu=1472)
            / bytes(S_OFFENDING_UDP)[:28]
        ),
    ),
    Case(
        "icmp-time-exceeded",
        lambda: e_eth(
            e_ip(
                R,
                A,
                ipv4.PROTO_ICMP,
                icmp.error(icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED, OFFENDING_PING),
            )
        ),
        lambda: (
            s_eth()
            / s_ip(ROUTER, IP_A, id=0, flags=0)
            / ICMP(type=11, code=0)
            / bytes(S_OFFENDING_PING)[:28]
        ),
    ),
    Case(
        "udp-no-checksum",
        lambda: e_eth(
            e_ip(
                A,
                B,
                ipv4.PROTO_UDP,
                udp.build(udp.UDPHeader(8285, 8285), b"overlay", A, B, with_checksum=False),
            )
        ),
        lambda: s_eth() / s_ip(id=0, flags=0) / UDP(sport=8285, dport=8285, chksum=0) / b"overlay",
    ),
    Case(
        "tcp-syn-mss-sackok-ts-nop-ws",
        lambda: e_eth(
            e_tcp(
                A,
                B,
                tcp.TCPHeader(40002, 443, seq=1, flags=tcp.SYN, window=64240, options=SYN_OPTIONS),
            )
        ),
        lambda: (
            s_eth()
            / s_ip(id=2, flags=0)
            / TCP(
                sport=40002,
                dport=443,
                seq=1,
                ack=0,
                flags="S",
                window=64240,
                options=[
                    ("MSS", 1460),
                    ("SAckOK", b""),
                    ("Timestamp", (123456789, 0)),
                    ("NOP", None),
                    ("WScale", 7),
                ],
            )
        ),
    ),
    Case(
        "tcp-ack-ts-sack-payload",
        lambda: e_eth(
            e_tcp(
                B,
                A,
                tcp.TCPHeader(
                    443,
                    40002,
                    seq=0xFFFFFFFF,
                    ack=2,
                    flags=tcp.ACK | tcp.PSH,
                    window=501,
                    options=ACK_OPTIONS,
                ),
                b"HTTP/1.1 200 OK\r\n\r\n",
            )
        ),
        lambda: (
            s_eth()
            / s_ip(IP_B, IP_A, id=2, flags=0)
            / TCP(
                sport=443,
                dport=40002,
                seq=0xFFFFFFFF,
                ack=2,
                flags="PA",
                window=501,
                options=[
                    ("NOP", None),
                    ("NOP", None),
                    ("Timestamp", (0xFFFFFFF0, 42)),
                    ("NOP", None),
                    ("NOP", None),
                    ("SAck", (1000, 2000, 3000, 0xFFFFFFFF)),
                ],
            )
            / b"HTTP/1.1 200 OK\r\n\r\n"
        ),
    ),
    Case(
        "tcp-fin-urg-ece-cwr-mss-padded",
        lambda: e_eth(
            e_tcp(
                A,
                B,
                tcp.TCPHeader(
                    1,
                    65535,
                    seq=7,
                    ack=8,
                    flags=tcp.Flags.FIN | tcp.Flags.URG | tcp.Flags.ECE | tcp.Flags.CWR | tcp.ACK,
                    window=0,
                    urgent=3,
                    options=(tcp.MSS(536), tcp.NOP()),
                ),
                b"abc",
            )
        ),
        lambda: (
            s_eth()
            / s_ip(id=2, flags=0)
            / TCP(
                sport=1,
                dport=65535,
                seq=7,
                ack=8,
                flags="FAUEC",
                window=0,
                urgptr=3,
                options=[("MSS", 536), ("NOP", None)],
            )
            / b"abc"
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_emunet_and_scapy_build_the_same_bytes(case: Case) -> None:
    assert case.emunet() == bytes(case.scapy())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scapy_built_frame_parses_in_emunet(case: Case) -> None:
    raw = bytes(case.scapy())
    assert emunet_view(raw) == scapy_view(raw)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_emunet_built_frame_parses_in_scapy_with_correct_checksums(case: Case) -> None:
    raw = case.emunet()
    assert scapy_view(raw) == emunet_view(raw)
    assert scapy_recomputed(raw) == raw


def test_views_see_every_header_kind() -> None:
    """The table really covers every kind the issue lists (guards against a shrunk table)."""
    layers: set[str] = set()
    icmp_kinds: set[tuple[int, int]] = set()
    fragments = 0
    for case in CASES:
        v = emunet_view(case.emunet())
        layers |= {k.rsplit(".", 1)[0] for k in v}
        fragments += "ip.payload" in v
        if "icmp.type" in v:
            icmp_kinds.add((v["icmp.type"], v["icmp.code"]))
    assert layers >= {"eth", "vlan", "arp", "ip", "icmp", "udp", "tcp", "q.ip", "q.udp", "q.tcp"}
    assert "q.icmp" in layers
    assert fragments == 2
    assert icmp_kinds >= {(8, 0), (0, 0), (3, 0), (3, 1), (3, 3), (3, 4), (11, 0)}


def test_a_corrupted_checksum_is_seen_by_both() -> None:
    """The views are sensitive: flipping a checksum byte makes emunet's verify refuse it."""
    raw = bytearray(CASES[0].emunet())
    raw[14 + 10] ^= 0xFF
    with pytest.raises(MalformedFrame, match="bad header checksum"):
        emunet_view(bytes(raw))
    assert scapy_recomputed(bytes(raw)) != bytes(raw)
