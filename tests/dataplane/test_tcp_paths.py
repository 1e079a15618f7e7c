"""TCP through the fabric: bulk transfers, loss, RST, and captures tshark decodes (issue 3)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from emunet.dataplane.fabric import Fabric
from emunet.dataplane.tcp import TCPConnection
from emunet.packets.pcap import PcapWriter

MIB = bytes(range(256)) * 4096


def transfer(fab: Fabric, src: str, dst_ip: object, data: bytes, timeout: float = 60.0) -> bytes:
    """Send ``data`` from pod ``src`` to a listener at ``dst_ip``:9000; return what arrived."""
    dst_ns = None
    for node in fab.nodes.values():
        for ns in node.namespaces():
            if any(a.ip == dst_ip for _, a in ns.addresses):
                dst_ns = ns
    assert dst_ns is not None
    listener = dst_ns.tcp_listen(9000)
    got = bytearray()
    server: list[TCPConnection] = []

    def on_accept() -> None:
        while (c := listener.accept()) is not None:
            server.append(c)

            def drain(c: TCPConnection = c) -> None:
                got.extend(c.recv())

            c.on_event = drain

    listener.on_event = on_accept
    conn = fab.pod(src).netns.tcp_connect(dst_ip, 9000, fab.now)  # type: ignore[arg-type]
    sent = 0

    def pump() -> None:
        nonlocal sent
        while sent < len(data):
            n = conn.send(data[sent : sent + 65536], fab.now)
            if n == 0:
                break
            sent += n
        if sent == len(data) and conn.state.name == "ESTABLISHED":
            conn.close(fab.now)

    conn.on_event = pump
    fab.run_until(lambda: conn.state.name == "ESTABLISHED", timeout=10)
    pump()
    fab.run_until(lambda: len(got) >= len(data) or conn.error is not None, timeout=timeout)
    assert conn.error is None, conn.error
    return bytes(got)


@pytest.fixture
def fab() -> Fabric:
    f = Fabric(nodes=2, seed=11)
    f.add_pod("node1", "a")
    f.add_pod("node1", "b")
    f.add_pod("node2", "c")
    return f


@pytest.mark.parametrize("dst", ["b", "c"], ids=["same-node", "cross-node"])
def test_tcp_1mib_pod_to_pod(fab: Fabric, dst: str) -> None:
    got = transfer(fab, "a", fab.pod(dst).ip, MIB)
    assert hashlib.sha256(got).digest() == hashlib.sha256(MIB).digest()


@pytest.mark.parametrize("node", ["node1", "node2"], ids=["own-node", "other-node"])
def test_tcp_pod_to_node_ip(fab: Fabric, node: str) -> None:
    data = MIB[: 200 * 1024]
    assert transfer(fab, "a", fab.node(node).node_ip, data) == data


def test_tcp_1mib_over_lossy_delayed_overlay() -> None:
    fab = Fabric(nodes=2, seed=5)
    fab.add_pod("node1", "a")
    c = fab.add_pod("node2", "c")
    fab.set_links(delay=0.020, loss=0.05)
    got = transfer(fab, "a", c.ip, MIB, timeout=300)
    assert hashlib.sha256(got).digest() == hashlib.sha256(MIB).digest()
    link = fab.link("node1", "node2")
    assert link.lost > 0  # loss really happened and was repaired


def test_tcp_connect_to_closed_port_is_refused(fab: Fabric) -> None:
    conn = fab.pod("a").netns.tcp_connect(fab.pod("c").ip, 4444, fab.now)
    fab.run(1.0)
    assert conn.state.name == "CLOSED" and conn.error == "ECONNREFUSED"


def test_tcp_mss_follows_route_mtu(fab: Fabric) -> None:
    conn = fab.pod("a").netns.tcp_connect(fab.pod("c").ip, 4444, fab.now)
    assert conn.mss == 1472 - 40


def _tap(fab: Fabric, node: str, ns: str, iface: str, buf: io.BytesIO) -> PcapWriter:
    dev = fab.node(node).namespace(ns).interfaces[iface]
    w = PcapWriter(buf, dev.linktype)
    dev.taps.append(lambda now, data: w.write(now, data))
    return w


def _tshark(path: Path, *extra: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "json",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _walk(obj: object, key: str) -> list[object]:
    found: list[object] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found.extend(_walk(v, key))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(_walk(v, key))
    return found


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_pcap_on_pod_eth0_and_underlay_decode_with_same_tcp_stream(
    fab: Fabric, tmp_path: Path
) -> None:
    pod_buf, wire_buf = io.BytesIO(), io.BytesIO()
    _tap(fab, "node1", "a", "eth0", pod_buf)
    _tap(fab, "node1", "root", "eth0", wire_buf)
    data = MIB[:20000]
    assert transfer(fab, "a", fab.pod("c").ip, data) == data
    pod_pcap, wire_pcap = tmp_path / "pod.pcap", tmp_path / "wire.pcap"
    pod_pcap.write_bytes(pod_buf.getvalue())
    wire_pcap.write_bytes(wire_buf.getvalue())
    pod = _tshark(pod_pcap)
    wire = _tshark(wire_pcap, "-d", "udp.port==8285,ip")
    for decoded in (pod, wire):
        text = json.dumps(decoded)
        assert "_ws.malformed" not in text and '_ws.expert.severity": "8388608' not in text
        for status in ("ip.checksum.status", "udp.checksum.status", "tcp.checksum.status"):
            assert set(_walk(decoded, status)) <= {"1"}, status  # 1 = good
        assert set(_walk(decoded, "tcp.checksum.status")) == {"1"}
        assert set(_walk(decoded, "ip.checksum.status")) == {"1"}
    assert set(_walk(wire, "udp.checksum.status")) == {"1"}  # the overlay datagrams

    # the same TCP segments in both: (seq, ack, len) per direction, overlay = inner packet
    def segments(decoded: list[dict[str, object]]) -> list[tuple[object, ...]]:
        out = []
        for pkt in decoded:
            layers = pkt["_source"]["layers"]  # type: ignore[index]
            tcp = layers.get("tcp")  # type: ignore[union-attr]
            if tcp is None:
                continue
            ip = layers["ip"]  # type: ignore[index]
            ip = ip[-1] if isinstance(ip, list) else ip  # inner header for the overlay
            out.append(
                (ip["ip.src"], ip["ip.dst"], tcp["tcp.seq_raw"], tcp["tcp.ack_raw"], tcp["tcp.len"])
            )
        return out

    pod_segs = segments(pod)
    wire_segs = segments(wire)
    assert pod_segs and pod_segs == wire_segs
    src_ips = {s[0] for s in wire_segs}
    assert src_ips == {str(fab.pod("a").ip), str(fab.pod("c").ip)}
    outer = _walk(wire, "udp.dstport")
    assert outer and set(outer) == {"8285"}


def test_tcp_connect_to_unknown_subnet_fails_fast_with_icmp_error(fab: Fabric) -> None:
    conn = fab.pod("a").netns.tcp_connect("10.244.99.9", 80, fab.now)
    fab.run(0.5)  # well before the 1 s SYN retransmission
    assert conn.state.name == "CLOSED" and conn.error == "ENETUNREACH"
