"""Deferred input: datagrams queued with ``defer=True`` run as one batch at the
next ``take_actions()``, as the node agent feeds what one loop wakeup read."""

from __future__ import annotations

from ipaddress import IPv4Address

from emunet.dataplane.actions import UnderlayPacket
from emunet.dataplane.node import Node
from emunet.packets import ipv4, tcp

IP1, IP2 = "172.18.0.11", "172.18.0.12"


def two_nodes() -> tuple[Node, Node]:
    n1 = Node("node1", IP1, "10.244.1.0/24", seed=1, strict=True)
    n2 = Node("node2", IP2, "10.244.2.0/24", seed=2, strict=True)
    n1.set_lease("10.244.2.0/24", IP2)
    n2.set_lease("10.244.1.0/24", IP1)
    n1.add_pod("a")
    n2.add_pod("c")
    return n1, n2


def carry(src: Node, dst: Node, now: float, *, defer: bool) -> int:
    """Move ``src``'s overlay datagrams to ``dst``; how many there were."""
    actions = src.take_actions()
    for action in actions:
        assert not isinstance(action, UnderlayPacket)
        dst.overlay_received((str(src.node_ip), 8285), action[1], now, defer=defer)
    return len(actions)


def test_deferred_datagrams_wait_for_take_actions_and_keep_their_order() -> None:
    n1, n2 = two_nodes()
    c = n2.pods["c"]
    srv = c.netns.udp_socket()
    srv.bind(port=5000)
    cli = n1.pods["a"].netns.udp_socket()
    cli.sendto(b"warm-up", (c.ip, 5000), 0.0)  # ARP on node2's cni0 first
    carry(n1, n2, 0.0, defer=False)
    n2.take_actions()
    assert srv.recvfrom() is not None
    for i in range(50):
        cli.sendto(i.to_bytes(2, "big") * 300, (c.ip, 5000), 1.0)
    assert carry(n1, n2, 1.0, defer=True) == 50
    assert srv.recvfrom() is None  # queued, not yet run
    n2.take_actions()  # one batch: everything runs, in order
    got = []
    while (msg := srv.recvfrom()) is not None:
        got.append(int.from_bytes(msg[0][:2], "big"))
    assert got == list(range(50))


def test_a_batch_of_tcp_segments_gets_one_ack_and_the_data_in_order() -> None:
    n1, n2 = two_nodes()
    c = n2.pods["c"]
    listener = c.netns.tcp_listen(80)
    conn = n1.pods["a"].netns.tcp_connect(c.ip, 80, 0.0)
    now = 0.0
    for _ in range(6):  # the handshake, one datagram at a time
        now += 0.001
        carry(n1, n2, now, defer=False)
        carry(n2, n1, now, defer=False)
    server = listener.accept()
    assert server is not None and conn.state.name == "ESTABLISHED"
    data = (bytes(range(256)) * 56)[: 10 * 1432]  # ten segments: MSS 1432 (flannel0 1472 - 40)
    assert conn.send(data, now) == len(data)
    now += 0.001
    assert carry(n1, n2, now, defer=True) == 10
    acks = n2.take_actions()
    assert len(acks) == 1  # one ACK for the batch (every second segment: five)
    packet = acks[0][1]
    hdr, _ = tcp.parse(memoryview(packet)[ipv4.MIN_HEADER_LEN :])
    assert hdr.flags == tcp.ACK and hdr.ack == conn.snd_nxt
    assert server.recv() == data
    assert IPv4Address(bytes(packet[16:20])) == conn.local_ip
