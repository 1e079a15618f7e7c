"""A node's timer: read again only for the namespaces touched, never late.

The runtime asks ``Node.get_timer()`` after every flush. It reads again the
deadlines of the pods marked since (a packet in or out, an app's TCP call, a
timer run) and keeps the others' (unchanged, or later: then the timer fires
early and finds nothing due). These tests hold it to the deadline every
namespace computes itself, after each step of work that sets each kind of
timer, including the ones an app call sets without sending anything.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from pytest import approx

from emunet.dataplane.fabric import Fabric
from emunet.dataplane.neigh import Nud
from emunet.dataplane.node import Node
from emunet.packets import ipv4

WAITING = (Nud.INCOMPLETE, Nud.DELAY, Nud.PROBE)  # the states with a timer


def _full_read() -> Callable[[Node], float | None]:
    """benchmarks/bench_timers.py's baseline: every namespace's own deadline and the
    oldest FDB entry's ageing, what the node's timer must not be later than."""
    path = Path(__file__).parents[2] / "benchmarks" / "bench_timers.py"
    spec = importlib.util.spec_from_file_location("bench_timers", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    full_read: Callable[[Node], float | None] = mod.full_read
    return full_read


earliest = _full_read()


def assert_not_late(node: Node) -> None:
    for ns in node.namespaces():  # the neighbours a table reads for its timer
        waiting = {ip for ip, n in ns.neighbours.items() if n.state in WAITING}
        assert set(ns.neigh.timed) == waiting, ns.name
    due = earliest(node)
    t = node.get_timer()
    if due is not None:
        assert t is not None and t <= due, (t, due)


def test_a_send_into_a_closed_window_arms_the_persist_timer_the_node_then_reads() -> None:
    """The client fills the server's receive buffer exactly: the last ACK closes
    the window with nothing left to send, so no timer runs. The app's next send
    sends nothing and arms the persist timer; the node must see it at once."""
    fab = Fabric(nodes=1, seed=5)
    pods = [fab.add_pod("node1", f"p{i}") for i in range(6)]
    node = fab.nodes["node1"]
    client, server = pods[0], pods[1]
    listener = server.netns.tcp_listen(80)
    conn = client.netns.tcp_connect(server.ip, 80, fab.now)
    assert_not_late(node)
    fab.run(0.1)
    srv = listener.accept()
    assert srv is not None
    sent = 0
    while sent < srv.rcv_buf_size:
        sent += conn.send(b"x" * min(65536, srv.rcv_buf_size - sent), fab.now)
        assert_not_late(node)
        fab.run(0.05)
        assert_not_late(node)
    fab.run(1.0)
    assert conn.snd_wnd == 0 and conn.unsent_or_unacked == 0
    assert conn.get_timer() is None
    assert conn.send(b"y" * 1000, fab.now) == 1000
    assert conn.get_timer() is not None  # the persist timer, and no segment
    assert_not_late(node)
    for _ in range(40):
        fab.run(0.1)
        assert_not_late(node)
    assert conn.stats.zero_window_probes >= 1  # the timer fired on time: probes went out
    srv.recv()  # the reader wakes: the window opens, the 1000 bytes follow
    fab.run(1.0)
    assert srv.recv() == b"y" * 1000


def test_arp_retries_fragments_and_time_wait_are_never_late() -> None:
    """Timers of every kind a pod keeps: an INCOMPLETE neighbour's retries (a ping
    to an address nobody has), a lone fragment's reassembly deadline, a closed
    connection's TIME-WAIT; untouched pods keep theirs meanwhile."""
    fab = Fabric(nodes=2, seed=7)
    pods = [fab.add_pod("node1", f"p{i}") for i in range(5)]
    other = fab.add_pod("node2", "q")
    node = fab.nodes["node1"]
    nobody = IPv4Address(int(pods[0].ip) + 200)  # in the subnet, no pod
    ping = pods[2].netns.ping_socket(7)
    ping.send(nobody, 1, fab.now, b"p" * 8)
    assert_not_late(node)
    assert pods[2].netns.get_timer() is not None  # the neighbour waits for a reply
    # a first fragment alone (MF set) arrives on pod 3's eth0: kept for reassembly
    first = ipv4.build(
        ipv4.IPv4Header(other.ip, pods[3].ip, 17, identification=7, mf=True), b"f" * 32
    )
    frame = pods[3].mac + pods[4].mac + b"\x08\x00" + first
    pods[3].eth0.receive(pods[3].eth0, frame, fab.now)
    fab.run(0.01)
    assert pods[3].netns.defrag.next_expiry() is not None
    assert_not_late(node)
    # a short connection across nodes, closed: the active closer waits in TIME-WAIT
    listener = other.netns.tcp_listen(8080)
    conn = pods[1].netns.tcp_connect(other.ip, 8080, fab.now)
    fab.run(0.1)
    srv = listener.accept()
    assert srv is not None
    conn.close(fab.now)
    assert_not_late(node)
    fab.run(0.1)
    srv.close(fab.now)
    for _ in range(30):
        fab.run(0.2)
        assert_not_late(node)
    assert conn.state.name == "TIME_WAIT"
    assert pods[2].netns.drops.get("neigh-failed", 0) + len(ping.errors) >= 1
    fab.run(120.0)  # every deadline passes: nothing is left waiting
    assert node.get_timer() == earliest(node)
    # a stale entry used again waits for its probe (DELAY, then PROBE)
    ping2 = pods[1].netns.ping_socket(8)
    ping2.send(other.ip, 1, fab.now, b"p")
    assert_not_late(node)
    for _ in range(20):
        fab.run(0.5)
        assert_not_late(node)
    assert [r.seq for r in ping2.replies] == [1]
    assert conn.state.name == "CLOSED" and not pods[3].netns.defrag.next_expiry()


def test_the_bridge_ages_its_oldest_entry_on_time() -> None:
    """The FDB's next ageing is read once per ageing, not per flush: refreshed
    entries make it early (it then finds nothing old enough), never late, and a
    new ageing time counts at once."""
    fab = Fabric(nodes=1, seed=3)
    a, b = fab.add_pod("node1", "a"), fab.add_pod("node1", "b")
    node = fab.nodes["node1"]
    bridge = node.bridge
    fab.run(100.0)
    ping = a.netns.ping_socket(9)
    ping.send(b.ip, 1, fab.now, b"p")
    fab.run(1.0)
    assert [r.seq for r in ping.replies] == [1]
    # a's and b's entries were learned at 0 and refreshed at 100: early, never late
    assert bridge.next_expiry() == approx(300.0, abs=1e-3)
    assert_not_late(node)
    bridge.ageing_time = 150.0
    assert bridge.next_expiry() == approx(150.0, abs=1e-3)
    fab.run(60.0)  # at 150 nothing is old enough; the bound is read again
    assert len(bridge.fdb) == 2 and bridge.next_expiry() == approx(250.0, abs=1e-3)
    assert_not_late(node)
    fab.run(100.0)
    assert not bridge.fdb and bridge.next_expiry() is None  # aged out at 250
    assert_not_late(node)


def test_at_its_deadline_an_expiry_happens_whatever_the_rounding() -> None:
    """The deadline a timer gives and the check that expires compare the same sum.
    35.4205 - 5.4205 is 29.999999999999996 in floats, and 568.7285 - 268.7285 is
    below 300: checked as a difference, a fragment queue started at 5.4205 and an
    FDB entry refreshed at 268.7285 would not be due at their deadlines, and a
    fake clock would fire the same timer for ever."""
    fab = Fabric(nodes=1, seed=5)
    a, b = fab.add_pod("node1", "a"), fab.add_pod("node1", "b")
    fab.run(5.4205 - fab.now)
    first = ipv4.build(ipv4.IPv4Header(a.ip, b.ip, 17, identification=9, mf=True), b"f" * 32)
    b.eth0.receive(b.eth0, b.mac + a.mac + b"\x08\x00" + first, fab.now)
    fab.run(0.0)
    assert b.netns.defrag.next_expiry() == 5.4205 + 30.0
    assert fab.run(40.0, max_events=1000) < 1000
    assert not b.netns.defrag.queues
    bridge = fab.nodes["node1"].bridge
    fab.run(268.7285 - fab.now)
    ping = a.netns.ping_socket(3)
    ping.send(b.ip, 1, fab.now, b"p")
    fab.run(0.0)  # both entries refreshed within the microseconds of the hops
    assert len(bridge.fdb) == 2
    assert fab.run(400.0, max_events=1000) < 1000
    assert not bridge.fdb


def test_a_connection_closed_without_a_segment_leaves_the_table_and_its_port() -> None:
    """``on_output`` follows every app call that may move a timer, so a close or an
    abort that sends nothing (a connection still in SYN-SENT: its SYN unanswered,
    here waiting for ARP) reaches the table too: the CLOSED connection is forgotten
    and its ephemeral port is free, as the kernel frees a socket at close."""
    fab = Fabric(nodes=1, seed=11)
    a = fab.add_pod("node1", "a")
    nobody = IPv4Address(int(a.ip) + 100)
    for how in ("close", "abort"):
        conn = a.netns.tcp_connect(nobody, 80, fab.now)
        fab.run(0.01)
        assert conn.state.name == "SYN_SENT" and len(a.netns.tcp_conns) == 1
        getattr(conn, how)(fab.now)
        assert conn.state.name == "CLOSED"
        assert a.netns.tcp_conns == {}, how
        a.netns.tcp_listen(conn.local_port).close(fab.now)  # the port is free again


def test_a_deleted_pods_namespace_leaves_the_timer_heap_at_once() -> None:
    """A pod deleted with a far deadline (a lone fragment's 30 s reassembly) while
    another pod's nearer ones (ARP retries) stay on top of the heap: its heap item
    goes with it, not when its deadline comes, so the namespace (sockets, buffers)
    is not kept alive by the node's timers."""
    fab = Fabric(nodes=1, seed=9)
    a, b = fab.add_pod("node1", "a"), fab.add_pod("node1", "b")
    node = fab.nodes["node1"]
    first = ipv4.build(ipv4.IPv4Header(b.ip, a.ip, 17, identification=3, mf=True), b"f" * 32)
    a.eth0.receive(a.eth0, a.mac + b.mac + b"\x08\x00" + first, fab.now)
    fab.run(0.01)
    b.netns.ping_socket(4).send(IPv4Address(int(b.ip) + 100), 1, fab.now, b"p")
    fab.run(0.01)
    ns = a.netns
    assert ns.defrag.next_expiry() is not None and b.netns.get_timer() is not None
    assert any(item[2] is ns for item in node._timer_heap)
    node.remove_pod("a")
    fab.run(0.5)  # b's retry deadline is on top; a's 30 s one would wait below it
    assert not any(item[2] is ns for item in node._timer_heap)
    assert_not_late(node)
