"""External oracle 2 (issue 2): tshark decodes emunet's pcaps with checksums on.

One pcap holds frames of every kind emunet writes (ARP, ICMP echo and errors,
UDP, TCP with options, IPv4 options, 802.1Q, and a UDP datagram in two
fragments, which tshark reassembles and checksums whole); a LINKTYPE_RAW file
holds what ``flannel0`` carries, and a nanosecond file checks timestamps.
tshark must find nothing malformed, no expert warning or error, every checksum
it can check good, and the fields emunet wrote.

Wireshark's checksum status enum (``proto_checksum_enum_e``): 0 bad, 1 good,
2 unverified (e.g. the cut-short datagram quoted by an ICMP error), 3 not
present (UDP checksum 0).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from emunet.packets import arp, ethernet, icmp, ipv4, tcp, udp
from emunet.packets.mac import MAC
from emunet.packets.pcap import LINKTYPE_RAW, PcapWriter

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not on PATH")

TSHARK_PREFS = [
    "-o",
    "ip.check_checksum:TRUE",
    "-o",
    "udp.check_checksum:TRUE",
    "-o",
    "tcp.check_checksum:TRUE",
    # raw sequence numbers, and no conversation analysis: we check wire formats
    "-o",
    "tcp.relative_sequence_numbers:FALSE",
    "-o",
    "tcp.analyze_sequence_numbers:FALSE",
]
EXPERT_WARN = 0x00600000  # PI_WARN; PI_ERROR is 0x00800000

MAC_A, MAC_B = MAC("02:42:0a:f4:01:02"), MAC("02:42:0a:f4:02:03")
A, B, R = IPv4Address("10.244.1.2"), IPv4Address("10.244.2.3"), IPv4Address("10.244.1.1")
T0 = 1_700_000_000

Expect = dict[str, dict[str, str | list[str]]]


@dataclass
class Frame:
    name: str
    data: bytes
    protocols: str  # tshark's frame.protocols
    expect: Expect = field(default_factory=dict)


# --------------------------------------------------- expectations from emunet


def hx(value: int, width: int = 4) -> str:
    return f"0x{value:0{width}x}"


def x_ip(h: ipv4.IPv4Header, status: str = "1") -> dict[str, str | list[str]]:
    return {
        "ip.version": "4",
        "ip.hdr_len": str(h.header_length),
        "ip.dsfield.dscp": str(h.dscp),
        "ip.dsfield.ecn": str(h.ecn),
        "ip.len": str(h.total_length),
        "ip.id": hx(h.identification),
        "ip.flags.df": str(int(h.df)),
        "ip.flags.mf": str(int(h.mf)),
        "ip.frag_offset": str(h.fragment_offset),
        "ip.ttl": str(h.ttl),
        "ip.proto": str(h.protocol),
        "ip.checksum": hx(h.checksum),
        "ip.checksum.status": status,
        "ip.src": str(h.src),
        "ip.dst": str(h.dst),
    }


def x_udp(h: udp.UDPHeader, status: str = "1") -> dict[str, str | list[str]]:
    return {
        "udp.srcport": str(h.sport),
        "udp.dstport": str(h.dport),
        "udp.length": str(h.length),
        "udp.checksum": hx(h.checksum),
        "udp.checksum.status": status,
    }


def x_tcp(h: tcp.TCPHeader) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {
        "tcp.srcport": str(h.sport),
        "tcp.dstport": str(h.dport),
        "tcp.seq_raw": str(h.seq),
        "tcp.hdr_len": str(h.data_offset),
        "tcp.flags": hx(h.flags),
        "tcp.window_size_value": str(h.window),
        "tcp.checksum": hx(h.checksum),
        "tcp.checksum.status": "1",
        "tcp.urgent_pointer": str(h.urgent),
    }
    if h.flags & tcp.ACK:
        out["tcp.ack_raw"] = str(h.ack)
    nops = [o for o in h.options if isinstance(o, tcp.NOP)]
    if nops:
        out["tcp.options.nop"] = ["01"] * len(nops)
    for o in h.options:
        if isinstance(o, tcp.MSS):
            out["tcp.options.mss_val"] = str(o.value)
        elif isinstance(o, tcp.WindowScale):
            out["tcp.options.wscale.shift"] = str(o.shift)
        elif isinstance(o, tcp.SACKPermitted):
            out["tcp.options.sack_perm"] = "04:02"
        elif isinstance(o, tcp.Timestamps):
            out["tcp.options.timestamp.tsval"] = str(o.tsval)
            out["tcp.options.timestamp.tsecr"] = str(o.tsecr)
        elif isinstance(o, tcp.SACK):
            out["tcp.options.sack_le"] = [str(le) for le, _ in o.blocks]
            out["tcp.options.sack_re"] = [str(re) for _, re in o.blocks]
    return out


def x_icmp(m: icmp.ICMPMessage) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {
        "icmp.type": str(m.type),
        "icmp.code": str(m.code),
        "icmp.checksum": hx(m.checksum),
        "icmp.checksum.status": "1",
    }
    if not m.is_error:
        out |= {"icmp.ident": str(m.identifier), "icmp.seq": str(m.sequence)}
    elif m.type == icmp.DEST_UNREACH and m.code == icmp.FRAG_NEEDED:
        out["icmp.mtu"] = str(m.next_hop_mtu)
    return out


def expect_ip_packet(pkt: bytes, prefix: str = "") -> tuple[Expect, str]:
    """tshark's expected view of an IPv4 packet emunet wrote, read back by emunet."""
    ip, payload = ipv4.parse(pkt, verify_checksum=True)
    exp: Expect = {prefix + "ip": x_ip(ip)}
    if ip.is_fragment:
        return exp, "ip:data"
    if ip.protocol == ipv4.PROTO_UDP:
        u, data = udp.parse(payload, verify_with=(ip.src, ip.dst))
        exp[prefix + "udp"] = x_udp(u, "1" if u.checksum else "3")
        return exp, "ip:udp:data" if data else "ip:udp"
    if ip.protocol == ipv4.PROTO_TCP:
        t, data = tcp.parse(payload, verify_with=(ip.src, ip.dst))
        exp[prefix + "tcp"] = x_tcp(t)
        return exp, "ip:tcp:data" if data else "ip:tcp"
    m = icmp.parse(payload, verify_checksum=True)
    exp[prefix + "icmp"] = x_icmp(m)
    if not m.is_error:
        return exp, "ip:icmp:data"
    qip, quoted = icmp.parse_quote(m.payload)
    q = prefix + "icmp/"
    exp[q + "ip"] = x_ip(qip)
    if qip.protocol == ipv4.PROTO_UDP:
        sport, dport, length, csum = udp.HEADER.unpack_from(quoted)
        exp[q + "udp"] = x_udp(udp.UDPHeader(sport, dport, length, csum), "2")
        return exp, "ip:icmp:ip:udp"
    if qip.protocol == ipv4.PROTO_TCP:
        sport, dport, seq = tcp.HEADER.unpack_from(bytes(quoted) + bytes(12))[:3]
        exp[q + "tcp"] = {
            "tcp.srcport": str(sport),
            "tcp.dstport": str(dport),
            "tcp.seq": str(seq),
        }
        return exp, "ip:icmp:ip:tcp"
    qm = icmp.parse(quoted)
    exp[q + "icmp"] = {
        "icmp.type": str(qm.type),
        "icmp.ident": str(qm.identifier),
        "icmp.seq": str(qm.sequence),
        "icmp.checksum.status": "2",
    }
    return exp, "ip:icmp:ip:icmp"


def eth_frame(
    name: str, pkt: bytes, *, vlan: ethernet.VlanTag | None = None, dst: MAC = MAC_B
) -> Frame:
    hdr = ethernet.EthernetHeader(dst, MAC_A, ethernet.ETH_P_IP, vlan)
    exp, protocols = expect_ip_packet(pkt)
    exp["eth"] = {
        "eth.dst": str(dst),
        "eth.src": str(MAC_A),
        "eth.type": hx(ethernet.ETH_P_8021Q if vlan else ethernet.ETH_P_IP),
    }
    if vlan is not None:
        exp["vlan"] = {
            "vlan.id": str(vlan.vid),
            "vlan.priority": str(vlan.pcp),
            "vlan.dei": str(int(vlan.dei)),
            "vlan.etype": "0x0800",
        }
        protocols = "vlan:ethertype:" + protocols
    return Frame(name, ethernet.build(hdr, pkt), "eth:ethertype:" + protocols, exp)


# ------------------------------------------------------------------ the frames


def ip_udp(
    src: IPv4Address, dst: IPv4Address, sport: int, dport: int, data: bytes, **kw: Any
) -> bytes:
    return ipv4.build(
        ipv4.IPv4Header(src, dst, ipv4.PROTO_UDP, **kw),
        udp.build(udp.UDPHeader(sport, dport), data, src, dst),
    )


def ip_tcp(src: IPv4Address, dst: IPv4Address, hdr: tcp.TCPHeader, data: bytes = b"") -> bytes:
    return ipv4.build(
        ipv4.IPv4Header(src, dst, ipv4.PROTO_TCP, identification=hdr.sport, df=True),
        tcp.build(hdr, data, src, dst),
    )


def ip_icmp(src: IPv4Address, dst: IPv4Address, msg: bytes, **kw: Any) -> bytes:
    return ipv4.build(ipv4.IPv4Header(src, dst, ipv4.PROTO_ICMP, **kw), msg)


DATA = b"emunet says hello" * 3
UDP_PKT = ip_udp(A, B, 40000, 40001, DATA, identification=0x1234, df=True)
SYN = tcp.TCPHeader(
    40002,
    40003,
    seq=0x11223344,
    flags=tcp.SYN,
    window=64240,
    options=(
        tcp.MSS(1460),
        tcp.SACKPermitted(),
        tcp.Timestamps(1000, 0),
        tcp.NOP(),
        tcp.WindowScale(7),
    ),
)
SYN_ACK = tcp.TCPHeader(
    40003,
    40002,
    seq=0xFFFFFF00,
    ack=0x11223345,
    flags=tcp.SYN | tcp.ACK,
    window=65160,
    options=(
        tcp.MSS(1400),
        tcp.SACKPermitted(),
        tcp.Timestamps(5000, 1000),
        tcp.NOP(),
        tcp.WindowScale(9),
    ),
)
ACK_SACK = tcp.TCPHeader(
    40002,
    40003,
    seq=0x11223345,
    ack=0xFFFFFF01,
    flags=tcp.ACK | tcp.PSH,
    window=502,
    options=(
        tcp.NOP(),
        tcp.NOP(),
        tcp.Timestamps(1001, 5000),
        tcp.NOP(),
        tcp.NOP(),
        tcp.SACK(((0xFFFFFF10, 0xFFFFFF20), (0xFFFFFF30, 0x00000010))),
    ),
)
PING = ip_icmp(
    A, B, icmp.echo(icmp.ECHO_REQUEST, 0x4D2, 1, bytes(range(48))), ttl=1, identification=7
)
PONG = ip_icmp(B, A, icmp.echo(icmp.ECHO_REPLY, 0x4D2, 1, bytes(range(48))), identification=8)
TCP_PKT = ip_tcp(A, B, SYN)


def fragments() -> tuple[bytes, bytes, bytes]:
    """A UDP datagram split in two at byte 48 of its payload, plus the whole datagram."""
    whole = ip_udp(A, B, 40004, 40005, bytes(range(200, 256)) + DATA, identification=0xF00D)
    seg = whole[20:]
    first = ipv4.build(
        ipv4.IPv4Header(A, B, ipv4.PROTO_UDP, identification=0xF00D, mf=True), seg[:48]
    )
    last = ipv4.build(
        ipv4.IPv4Header(A, B, ipv4.PROTO_UDP, identification=0xF00D, fragment_offset=6), seg[48:]
    )
    return first, last, whole


def frame_set() -> list[Frame]:
    """Every kind of frame, each with what tshark must show for it."""
    frames = [
        Frame(
            "arp-request",
            ethernet.build(
                ethernet.EthernetHeader(MAC.BROADCAST, MAC_A, ethernet.ETH_P_ARP),
                arp.build(arp.ARPPacket(arp.REQUEST, MAC_A, A, MAC.ZERO, R)),
            ),
            "eth:ethertype:arp",
            {
                "eth": {"eth.dst": "ff:ff:ff:ff:ff:ff", "eth.type": "0x0806"},
                "arp": {
                    "arp.opcode": "1",
                    "arp.src.hw_mac": str(MAC_A),
                    "arp.src.proto_ipv4": str(A),
                    "arp.dst.hw_mac": "00:00:00:00:00:00",
                    "arp.dst.proto_ipv4": str(R),
                },
            },
        ),
        Frame(
            "arp-reply",
            ethernet.build(
                ethernet.EthernetHeader(MAC_A, MAC_B, ethernet.ETH_P_ARP),
                arp.build(arp.ARPPacket(arp.REPLY, MAC_B, R, MAC_A, A)),
            ),
            "eth:ethertype:arp",
            {
                "arp": {
                    "arp.opcode": "2",
                    "arp.src.hw_mac": str(MAC_B),
                    "arp.src.proto_ipv4": str(R),
                    "arp.dst.hw_mac": str(MAC_A),
                    "arp.dst.proto_ipv4": str(A),
                },
            },
        ),
        eth_frame("icmp-echo-request", PING),
        eth_frame("icmp-echo-reply", PONG),
        eth_frame(
            "icmp-net-unreachable",
            ip_icmp(R, A, icmp.error(icmp.DEST_UNREACH, icmp.NET_UNREACH, UDP_PKT)),
        ),
        eth_frame(
            "icmp-host-unreachable",
            ip_icmp(R, A, icmp.error(icmp.DEST_UNREACH, icmp.HOST_UNREACH, TCP_PKT)),
        ),
        eth_frame(
            "icmp-port-unreachable",
            ip_icmp(B, A, icmp.error(icmp.DEST_UNREACH, icmp.PORT_UNREACH, UDP_PKT)),
        ),
        eth_frame(
            "icmp-frag-needed",
            ip_icmp(R, A, icmp.error(icmp.DEST_UNREACH, icmp.FRAG_NEEDED, UDP_PKT, mtu=1472)),
        ),
        eth_frame(
            "icmp-time-exceeded",
            ip_icmp(R, A, icmp.error(icmp.TIME_EXCEEDED, icmp.TTL_EXCEEDED, PING), ttl=64),
        ),
        eth_frame("udp", UDP_PKT),
        eth_frame(
            "udp-no-checksum",
            ipv4.build(
                ipv4.IPv4Header(A, B, ipv4.PROTO_UDP),
                udp.build(udp.UDPHeader(40006, 40007), DATA, A, B, with_checksum=False),
            ),
        ),
        eth_frame(
            "udp-802.1q-ip-options-dscp-ecn",
            ip_udp(
                A,
                B,
                40008,
                40009,
                DATA,
                dscp=46,
                ecn=2,
                ttl=200,
                options=b"\x94\x04\x00\x00\x01\x01\x01\x00",  # router alert, NOPs, EOL
            ),
            vlan=ethernet.VlanTag(vid=42, pcp=6, dei=True),
        ),
        eth_frame("tcp-syn-options", TCP_PKT),
        eth_frame("tcp-syn-ack-options", ip_tcp(B, A, SYN_ACK)),
        eth_frame("tcp-ack-sack-payload", ip_tcp(A, B, ACK_SACK, DATA)),
    ]
    first, last, whole = fragments()
    f1 = eth_frame("ipv4-first-fragment", first)
    f2 = eth_frame("ipv4-last-fragment-reassembled", last)
    f2.protocols = "eth:ethertype:ip:udp:data"
    wip, wpayload = ipv4.parse(whole)
    wudp, _ = udp.parse(wpayload, verify_with=(wip.src, wip.dst))
    f2.expect["udp"] = x_udp(wudp)
    return [*frames, f1, f2]


FRAMES = frame_set()


# ------------------------------------------------------------------ tshark I/O


def tshark(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "json", "--no-duplicate-keys", *TSHARK_PREFS],
        capture_output=True,
        check=True,
        timeout=120,
    )
    packets: list[dict[str, Any]] = json.loads(out.stdout)
    return [p["_source"]["layers"] for p in packets]


def flatten(layer: dict[str, Any]) -> dict[str, list[str]]:
    """Field name -> values of one protocol layer; nested protocols are left out.

    Trees (``ip.flags_tree``...) are fields' children; a key without a dot
    (``ip`` inside ``icmp``) is a protocol of its own.
    """
    out: dict[str, list[str]] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict):
            if "." in key or key == "_ws.expert":
                for k, v in value.items():
                    walk(k, v)
        elif isinstance(value, list):
            for v in value:
                walk(key, v)
        else:
            out.setdefault(key, []).append(str(value))

    for k, v in layer.items():
        walk(k, v)
    return out


def sublayer(layers: dict[str, Any], path: str) -> dict[str, Any]:
    node: Any = layers
    for part in path.split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def leaves(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from leaves(v, key)
    else:
        yield key, str(node)


def assert_clean(layers: dict[str, Any], name: str) -> None:
    """No malformed marker, no expert info of warning or worse, no bad checksum."""
    for key, value in leaves(layers):
        assert not key.startswith("_ws.malformed"), (name, key)
        if key == "_ws.expert.severity":
            assert int(value) < EXPERT_WARN, (
                name,
                [m for k, m in leaves(layers) if k == "_ws.expert.message"],
            )
        if key.endswith("checksum.status"):
            assert value != "0", (name, key)
        assert key != "ip.checksum_bad", name


def assert_fields(layers: dict[str, Any], frame: Frame) -> None:
    for path, fields in frame.expect.items():
        got = flatten(sublayer(layers, path))
        for name, want in fields.items():
            assert got.get(name) == (want if isinstance(want, list) else [want]), (
                frame.name,
                path,
                name,
                got.get(name),
            )


# ------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Frame], list[dict[str, Any]]]:
    frames = FRAMES
    path = tmp_path_factory.mktemp("pcap") / "every-kind.pcap"
    with path.open("wb") as f:
        w = PcapWriter(f)
        for i, fr in enumerate(frames):
            w.write(T0 + i / 1000, fr.data)
    return frames, tshark(path)


def test_tshark_sees_every_frame(decoded: tuple[list[Frame], list[dict[str, Any]]]) -> None:
    frames, packets = decoded
    assert len(packets) == len(frames)
    for i, (fr, layers) in enumerate(zip(frames, packets, strict=True)):
        assert layers["frame"]["frame.protocols"] == fr.protocols, fr.name
        assert layers["frame"]["frame.len"] == str(len(fr.data)), fr.name
        assert layers["frame"]["frame.time_epoch"] == f"{T0}.{i:03d}000000", fr.name


@pytest.mark.parametrize("index", range(len(FRAMES)), ids=[f.name for f in FRAMES])
def test_tshark_finds_frame_clean_with_emunet_fields(
    decoded: tuple[list[Frame], list[dict[str, Any]]], index: int
) -> None:
    frames, packets = decoded
    assert_clean(packets[index], frames[index].name)
    assert_fields(packets[index], frames[index])


def test_the_reassembled_datagram_is_checksummed_whole(
    decoded: tuple[list[Frame], list[dict[str, Any]]],
) -> None:
    last = decoded[1][-1]
    assert last["ip"]["ip.fragments"]  # tshark put the two fragments together
    assert flatten(last["udp"])["udp.checksum.status"] == ["1"]


def test_a_bad_checksum_is_reported_by_tshark(tmp_path: Path) -> None:
    """The oracle can say no: a flipped UDP checksum byte shows as status 0."""
    data = bytearray(eth_frame("udp", UDP_PKT).data)
    data[14 + 20 + 6] ^= 0x01
    path = tmp_path / "bad.pcap"
    with path.open("wb") as f:
        PcapWriter(f).write(T0, data)
    (layers,) = tshark(path)
    assert flatten(layers["udp"])["udp.checksum.status"] == ["0"]
    with pytest.raises(AssertionError):
        assert_clean(layers, "bad")


def test_linktype_raw_file(tmp_path: Path) -> None:
    """What flannel0 carries: bare IPv4 packets, LINKTYPE_RAW (101)."""
    packets = [UDP_PKT, TCP_PKT, PING, ip_icmp(R, A, icmp.error(3, 0, UDP_PKT))]
    path = tmp_path / "flannel0.pcap"
    with path.open("wb") as f:
        w = PcapWriter(f, LINKTYPE_RAW)
        for i, pkt in enumerate(packets):
            w.write(T0 + i, pkt)
    decoded = tshark(path)
    assert len(decoded) == len(packets)
    for pkt, layers in zip(packets, decoded, strict=True):
        exp, protocols = expect_ip_packet(pkt)
        assert layers["frame"]["frame.protocols"] == "raw:" + protocols
        assert layers["frame"]["frame.encap_type"] == "7"  # WTAP_ENCAP_RAW_IP
        assert_clean(layers, protocols)
        assert_fields(layers, Frame(protocols, pkt, protocols, exp))


def test_nanosecond_file(tmp_path: Path) -> None:
    path = tmp_path / "ns.pcap"
    stamps = [T0 * 10**9 + 123_456_789, T0 * 10**9 + 999_999_999, (T0 + 1) * 10**9 + 1]
    with path.open("wb") as f:
        w = PcapWriter(f, nanosecond=True)
        for ns in stamps:
            w.write_ns(ns, eth_frame("udp", UDP_PKT).data)
        w.write(T0 + 2.5, eth_frame("udp", UDP_PKT).data)
    decoded = tshark(path)
    want = [f"{ns // 10**9}.{ns % 10**9:09d}" for ns in stamps] + [f"{T0 + 2}.500000000"]
    assert [p["frame"]["frame.time_epoch"] for p in decoded] == want
    for layers in decoded:
        assert_clean(layers, "ns")


# The expectations above are read back from emunet's bytes by emunet; these are
# the values the frames were built from, so a builder and parser that agree on
# a wrong layout cannot pass.
LITERALS: dict[str, dict[str, dict[str, str | list[str]]]] = {
    "icmp-frag-needed": {"icmp": {"icmp.type": "3", "icmp.code": "4", "icmp.mtu": "1472"}},
    "icmp-time-exceeded": {"icmp": {"icmp.type": "11"}, "icmp/icmp": {"icmp.ident": "1234"}},
    "icmp-echo-request": {"icmp": {"icmp.ident": "1234", "icmp.seq": "1"}, "ip": {"ip.ttl": "1"}},
    "icmp-net-unreachable": {
        "icmp": {"icmp.code": "0"},
        "icmp/ip": {"ip.id": "0x1234", "ip.flags.df": "1"},
        "icmp/udp": {"udp.srcport": "40000", "udp.dstport": "40001"},
    },
    "udp-802.1q-ip-options-dscp-ecn": {
        "vlan": {"vlan.id": "42", "vlan.priority": "6", "vlan.dei": "1"},
        "ip": {
            "ip.dsfield.dscp": "46",
            "ip.dsfield.ecn": "2",
            "ip.ttl": "200",
            "ip.hdr_len": "28",
        },
    },
    "tcp-syn-options": {
        "tcp": {
            "tcp.seq_raw": str(0x11223344),
            "tcp.options.mss_val": "1460",
            "tcp.options.wscale.shift": "7",
            "tcp.options.timestamp.tsval": "1000",
            "tcp.flags.syn": "1",
        }
    },
    "tcp-ack-sack-payload": {
        "tcp": {
            "tcp.ack_raw": str(0xFFFFFF01),
            "tcp.options.sack_le": [str(0xFFFFFF10), str(0xFFFFFF30)],
            "tcp.options.sack_re": [str(0xFFFFFF20), "16"],
            "tcp.flags.push": "1",
        }
    },
    "ipv4-first-fragment": {"ip": {"ip.flags.mf": "1", "ip.frag_offset": "0", "ip.id": "0xf00d"}},
    "ipv4-last-fragment-reassembled": {"ip": {"ip.flags.mf": "0", "ip.frag_offset": "6"}},
    "udp-no-checksum": {"udp": {"udp.checksum": "0x0000", "udp.checksum.status": "3"}},
}


@pytest.mark.parametrize("name", sorted(LITERALS))
def test_tshark_reads_the_values_the_frames_were_built_from(
    decoded: tuple[list[Frame], list[dict[str, Any]]], name: str
) -> None:
    frames, packets = decoded
    (index,) = [i for i, f in enumerate(frames) if f.name == name]
    assert_fields(packets[index], Frame(name, b"", "", LITERALS[name]))
