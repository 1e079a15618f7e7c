"""Nothing raises out of the data plane: random and mutated bytes at every entry point.

The fabric runs in strict mode, so an internal exception would propagate
here instead of being counted as an "internal error" drop.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emunet.dataplane.fabric import Fabric
from emunet.dataplane.trace import Drop


def _fabric_with_capture() -> tuple[Fabric, list[tuple[str, str, str, bytes]]]:
    """A fabric plus real frames seen on each interface during UDP, ping and ARP traffic."""
    fab = Fabric(nodes=2, seed=3)
    a = fab.add_pod("node1", "a")
    c = fab.add_pod("node2", "c")
    seen: list[tuple[str, str, str, bytes]] = []
    for node in fab.nodes.values():
        for ns in node.namespaces():
            for iface in ns.interfaces.values():

                def tap(
                    now: float, data: bytes | bytearray, n=node.name, ns=ns.name, i=iface.name
                ) -> None:
                    seen.append((n, ns, i, bytes(data)))

                iface.taps.append(tap)
    srv = c.netns.udp_socket()
    srv.bind(port=53)
    a.netns.udp_socket().sendto(b"query", (c.ip, 53), fab.now)
    a.netns.ping_socket().send(c.ip, 1, fab.now, b"x" * 16)
    a.netns.udp_socket().sendto(b"closed", (c.ip, 54), fab.now)
    fab.run(1.0)
    return fab, seen


FAB, SAMPLES = _fabric_with_capture()
ENTRY_POINTS = sorted(
    {
        (node.name, ns.name, i)
        for node in FAB.nodes.values()
        for ns in node.namespaces()
        for i in ns.interfaces
    }
)


def _inject(fab: Fabric, node: str, ns: str, iface: str, data: bytes) -> None:
    n = fab.node(node)
    if ns == "root" and iface == "eth0":
        n.underlay_received(data, fab.now)
    elif ns == "root" and iface == "flannel0":
        n.overlay_received(("172.18.0.3", 8285), data, fab.now)
    else:
        n.inject(ns, iface, data, fab.now)
    fab.run(0.01)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(entry=st.sampled_from(ENTRY_POINTS), data=st.binary(max_size=200))
def test_random_bytes_at_every_entry_point(entry: tuple[str, str, str], data: bytes) -> None:
    _inject(FAB, *entry, data)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    sample=st.sampled_from(SAMPLES),
    cut=st.integers(min_value=0, max_value=200),
    flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=4),
)
def test_mutated_real_frames(
    sample: tuple[str, str, str, bytes], cut: int, flips: list[tuple[int, int]]
) -> None:
    node, ns, iface, frame = sample
    data = bytearray(frame[: max(cut, 1)] if cut < len(frame) else frame)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _inject(FAB, node, ns, iface, bytes(data))


def test_malformed_frames_are_counted_with_a_reason() -> None:
    fab = Fabric(nodes=1)
    pod = fab.add_pod("node1", "a")
    fab.tracer.enabled = True
    node = fab.node("node1")
    node.inject("a", "eth0", b"\x01\x02\x03", fab.now)  # runt frame
    frame = bytearray(pod.mac + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00")
    frame += bytes.fromhex("4500001c0000400040110000") + bytes(8) + bytes(8)  # bad checksum
    node.inject("a", "eth0", bytes(frame), fab.now)
    node.underlay_received(b"\x45" + bytes(10), fab.now)
    fab.run(0.1)
    reasons = [h.detail for h in fab.tracer.drops()]
    assert reasons == [
        "malformed: ethernet frame of 3 bytes",
        "malformed: ipv4: bad header checksum",
        "malformed: ipv4: 11 bytes",
    ]
    assert node.drops()[str(Drop.MALFORMED)] == 3
    assert pod.eth0.rx_dropped == 2 and node.eth0.rx_dropped == 1
