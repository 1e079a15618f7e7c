"""conntrack: the TCP state machine, UDP/ICMP timeouts, expiry, table full, listing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from emunet.dataplane.conntrack import (
    ORIGINAL,
    REPLY,
    TCP_TRANSITIONS,
    ConntrackEntry,
    ConntrackTable,
    Status,
    TcpState,
    TcpVerdict,
    format_entry,
    tcp_flag_class,
)

C, S = int(IPv4Address("10.244.1.2")), int(IPv4Address("10.244.2.3"))
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
T = (6, C, S, 40000, 80)

LIFECYCLE = [
    # direction, flags, state after, timeout (s)
    (ORIGINAL, SYN, TcpState.SYN_SENT, 120),
    (REPLY, SYN | ACK, TcpState.SYN_RECV, 60),
    (ORIGINAL, ACK, TcpState.ESTABLISHED, 86400),
    (ORIGINAL, ACK, TcpState.ESTABLISHED, 86400),
    (ORIGINAL, FIN | ACK, TcpState.FIN_WAIT, 120),
    (REPLY, ACK, TcpState.CLOSE_WAIT, 60),
    (REPLY, FIN | ACK, TcpState.LAST_ACK, 30),
    (ORIGINAL, ACK, TcpState.TIME_WAIT, 120),
]


def open_tcp(table: ConntrackTable, now: float = 0.0, t: tuple[int, ...] = T) -> ConntrackEntry:
    e = table.allocate(t, now)
    assert e is not None
    assert table.start(e, SYN, now)
    table.confirm(e)
    return e


def test_tcp_full_lifecycle() -> None:
    table = ConntrackTable()
    e = open_tcp(table)
    assert (e.state, e.expires) == (TcpState.SYN_SENT, 120)
    for i, (d, flags, state, timeout) in enumerate(LIFECYCLE[1:], start=1):
        assert table.update(e, d, flags, float(i)) == TcpVerdict.OK
        assert e.state == state, (i, d, flags)
        assert e.expires == i + timeout
        if state == TcpState.ESTABLISHED:
            assert e.assured
    assert e.status & Status.SEEN_REPLY


@pytest.mark.parametrize(
    ("start", "d", "flags", "verdict", "after"),
    [
        (TcpState.ESTABLISHED, ORIGINAL, RST, TcpVerdict.OK, TcpState.CLOSE),
        (TcpState.SYN_SENT, REPLY, ACK, TcpVerdict.OK, TcpState.SYN_SENT),  # ignored
        (TcpState.SYN_SENT, ORIGINAL, FIN, TcpVerdict.INVALID, TcpState.SYN_SENT),
        (TcpState.TIME_WAIT, ORIGINAL, SYN, TcpVerdict.REOPEN, TcpState.TIME_WAIT),
        (TcpState.SYN_SENT, REPLY, SYN, TcpVerdict.OK, TcpState.SYN_SENT2),
    ],
)
def test_tcp_transitions(
    start: TcpState, d: int, flags: int, verdict: TcpVerdict, after: TcpState
) -> None:
    table = ConntrackTable()
    e = open_tcp(table)
    e.state = start
    assert table.update(e, d, flags, 1.0) == verdict
    assert e.state == after


def test_tcp_first_packet_must_open() -> None:
    table = ConntrackTable()
    for flags, ok in ((SYN, True), (ACK, True), (RST, False), (FIN, False), (SYN | ACK, False)):
        e = table.allocate(T, 0.0)
        assert e is not None
        assert table.start(e, flags, 0.0) is ok
        table.discard(e)


def test_udp_unreplied_then_stream() -> None:
    table = ConntrackTable()
    t = (17, C, S, 5000, 53)
    e = table.allocate(t, 0.0)
    assert e is not None and table.start(e, 0, 0.0)
    table.confirm(e)
    assert e.expires == 30
    assert "[UNREPLIED]" in format_entry(e, 0.0)
    table.update(e, REPLY, 0, 1.0)  # reply within 2 s: not yet a stream
    assert (e.expires, e.assured) == (31.0, False)
    table.update(e, ORIGINAL, 0, 3.0)
    assert (e.expires, e.assured) == (123.0, True)
    assert format_entry(e, 3.0) == (
        "udp      17 120 src=10.244.1.2 dst=10.244.2.3 sport=5000 dport=53 "
        "src=10.244.2.3 dst=10.244.1.2 sport=53 dport=5000 [ASSURED] mark=0 use=1"
    )


def test_timeouts_expire_in_fake_time_and_refresh_is_lazy() -> None:
    table = ConntrackTable()
    a = open_tcp(table, 0.0)
    b = table.allocate((1, C, S, 9, 9), 0.0)
    assert b is not None and table.start(b, 0, 0.0)
    b.icmp_type = 8
    table.confirm(b)
    assert table.get_timer() == 30.0
    table.update(b, REPLY, 0, 20.0)  # refreshed to 50
    assert table.handle_timer(30.0) == 0  # heap item re-armed, nothing removed
    assert table.get_timer() == 50.0
    assert table.handle_timer(50.0) == 1
    assert list(table) == [a]
    assert table.lookup(a.tuples[REPLY], 119.9) == (a, REPLY)
    assert table.lookup(a.tuples[ORIGINAL], 120.0) is None  # past its deadline
    assert len(table) == 0


def test_full_table_evicts_unassured_then_refuses() -> None:
    table = ConntrackTable(max_entries=2)
    first = open_tcp(table, 0.0, (6, C, S, 1, 80))
    open_tcp(table, 0.0, (6, C, S, 2, 80))
    third = table.allocate((6, C, S, 3, 80), 1.0)
    assert third is not None and not first.live  # the oldest unassured went
    assert table.stats["early_drop"] == 1
    table.start(third, SYN, 1.0)
    table.confirm(third)
    for e in list(table):
        table.update(e, REPLY, SYN | ACK, 1.0)
        table.update(e, ORIGINAL, ACK, 1.0)
        assert e.assured
    assert table.allocate((6, C, S, 4, 80), 2.0) is None
    assert table.stats["drop"] == 1


def test_icmp_listing() -> None:
    table = ConntrackTable()
    e = table.allocate((1, C, S, 77, 77), 0.0)
    assert e is not None and table.start(e, 0, 0.0)
    e.icmp_type = 8
    table.confirm(e)
    table.update(e, REPLY, 0, 0.0)
    assert table.listing(0.0) == (
        "icmp     1 30 src=10.244.1.2 dst=10.244.2.3 type=8 code=0 id=77 "
        "src=10.244.2.3 dst=10.244.1.2 type=0 code=0 id=77 mark=0 use=1\n"
    )


def test_flush() -> None:
    table = ConntrackTable()
    open_tcp(table, 0.0, (6, C, S, 1, 80))
    open_tcp(table, 0.0, (6, C, S, 2, 80))
    assert table.flush(lambda e: e.tuples[0][3] == 1) == 1
    assert len(table) == 1
    assert table.lookup((6, C, S, 1, 80), 0.0) is None


def test_ack_keeps_established_in_both_directions() -> None:
    """refresh_established skips the state table on this fact of the table."""
    est = TcpState.ESTABLISHED
    assert TCP_TRANSITIONS[ORIGINAL][tcp_flag_class(ACK)][est] == est
    assert TCP_TRANSITIONS[REPLY][tcp_flag_class(ACK)][est] == est


def udp_entry(table: ConntrackTable) -> ConntrackEntry:
    """A confirmed UDP connection 10.244.1.2:5000 -> :53 that has not seen its reply."""
    e = table.allocate((17, C, S, 5000, 53), 0.0)
    assert e is not None and table.start(e, 0, 0.0)
    table.confirm(e)
    return e


def echo_entry(table: ConntrackTable) -> ConntrackEntry:
    """A confirmed ping 10.244.1.2 -> 10.244.2.3 (identifier 77) not answered yet."""
    e = table.allocate((1, C, S, 77, 77), 0.0)
    assert e is not None and table.start(e, 0, 0.0)
    e.icmp_type = 8
    table.confirm(e)
    return e


def ct_state(e: ConntrackEntry) -> tuple[object, ...]:
    return (e.state, e.expires, e.status, e.live)


@pytest.mark.parametrize("proto", [6, 17, 1])
@pytest.mark.parametrize("flags", [ACK, ACK | 0x08, ACK | FIN, SYN, RST | ACK, 0])
@pytest.mark.parametrize("replied", [True, False])
@pytest.mark.parametrize("at", [0.5, 2.5, 200.0])
def test_refresh_established_is_update_for_what_it_takes(
    proto: int, flags: int, replied: bool, at: float
) -> None:
    """The fast refresh either declines, changing nothing, or does what update does."""

    def entry() -> tuple[ConntrackTable, ConntrackEntry]:
        table = ConntrackTable()
        if proto == 6:
            e = open_tcp(table)
            if replied:
                table.update(e, REPLY, SYN | ACK, 0.1)
                table.update(e, ORIGINAL, ACK, 0.2)
        else:
            e = udp_entry(table) if proto == 17 else echo_entry(table)
            if replied:
                table.update(e, REPLY, 0, 0.1)
        return table, e

    fast_table, fast = entry()
    slow_table, slow = entry()
    state = ct_state
    before = state(fast)
    if fast_table.refresh_established(fast, flags, at):
        assert slow_table.update(slow, ORIGINAL, flags, at) == TcpVerdict.OK
        assert state(fast) == state(slow)
        unassured = fast in fast_table._unassured, slow in slow_table._unassured
        assert unassured[0] == unassured[1]
    else:
        assert state(fast) == before
        taken = replied and at < 30.0 and (proto != 6 or flags in (ACK, ACK | 0x08))
        assert not taken, "a packet the fast refresh should take was declined"


@pytest.mark.parametrize("nat", ["src", "dst", "masq"])
def test_refresh_established_declines_natted_flows(nat: str) -> None:
    """A NATed connection is rewritten by the hooks: never refreshed past them."""
    table = ConntrackTable()
    e = udp_entry(table)
    table.update(e, REPLY, 0, 0.1)
    assert table.refresh_established(e, 0, 0.2)
    if nat == "masq":
        e.masq = True
    else:
        e.status |= Status.SRC_NAT if nat == "src" else Status.DST_NAT
    before = (e.expires, e.status)
    assert not table.refresh_established(e, 0, 5.0)
    assert (e.expires, e.status) == before


@pytest.mark.parametrize("proto", [6, 17])
@pytest.mark.parametrize("replied", [True, False])
@pytest.mark.parametrize("nat", ["", "src", "dst", "masq"])
@pytest.mark.parametrize("at", [0.5, 29.0, 31.0])
def test_refresh_unreplied_is_update_for_what_it_takes(
    proto: int, replied: bool, nat: str, at: float
) -> None:
    """The refresh of an unreplied stream's cached flow either declines, changing
    nothing, or does what update does for an ORIGINAL packet; it takes exactly
    the live, un-NATed UDP connections that have not seen their reply."""

    def entry() -> tuple[ConntrackTable, ConntrackEntry]:
        table = ConntrackTable()
        e = open_tcp(table) if proto == 6 else udp_entry(table)
        if replied:
            table.update(e, REPLY, SYN | ACK, 0.1)
        if nat == "masq":
            e.masq = True
        elif nat:
            e.status |= Status.SRC_NAT if nat == "src" else Status.DST_NAT
        return table, e

    fast_table, fast = entry()
    slow_table, slow = entry()
    state = ct_state
    before = state(fast)
    if fast_table.refresh_unreplied(fast, at):
        assert slow_table.update(slow, ORIGINAL, 0, at) == TcpVerdict.OK
        assert state(fast) == state(slow)
    else:
        assert state(fast) == before
    taken = proto == 17 and not replied and not nat and at < 30.0
    assert state(fast) != before if taken else state(fast) == before
