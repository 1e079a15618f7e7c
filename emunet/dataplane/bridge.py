"""A learning bridge (``cni0``), as Linux's bridge does it.

Forwarding database (FDB): source MACs are learned per port with the time they
were last seen; entries age out after ``ageing_time`` (300 s, Linux default).
The bridge device's own MAC is a permanent *local* entry: frames to it go up
to the root namespace's IP stack. Broadcast, multicast and unknown unicast are
flooded to every port but the ingress one (the local device gets broadcast and
multicast too).

A port's frames arrive at :meth:`Bridge.port_rx` (its rx_handler, as Linux's
``br_handle_frame``); the bridge device's own transmit is :meth:`Bridge.xmit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from emunet.dataplane.interfaces import Interface
from emunet.dataplane.netns import Namespace
from emunet.dataplane.trace import Drop
from emunet.packets.mac import MAC

DEFAULT_AGEING: Final = 300.0
FORGOTTEN: Final = -math.inf  # the update time of a removed entry: older than any ageing

NfHook = Callable[["Interface", bytes | bytearray, float], bytes | bytearray | None]


class FdbEntry:
    __slots__ = ("port", "updated")

    def __init__(self, port: Interface, updated: float) -> None:
        self.port = port
        self.updated = updated


class Bridge:
    """Holds the FDB and forwards frames between its ports.

    ``device``: the bridge device (``cni0``), whose MAC is the bridge's, in the
    namespace ``stack``: frames leave on a port by its L2 transmit, go up by its
    receive on the device, and what the bridge cannot take is its drop;
    ``trace(now, event, detail, iface)`` reports a hop when tracing is on.
    """

    def __init__(
        self,
        device: Interface,
        stack: Namespace,
        *,
        trace: Callable[[float, str, str, str], None],
        ageing_time: float = DEFAULT_AGEING,
    ) -> None:
        assert device.mac is not None
        self.name = device.name
        self.device = device
        self.stack = stack
        self.mac = device.mac
        self.ports: list[Interface] = []
        self.fdb: dict[bytes, FdbEntry] = {}
        self.ageing_time = ageing_time
        # at most the oldest entry's time (None: read them again): entries are only
        # ever refreshed, learned now or forgotten, so it holds until the next ageing
        self._oldest: float | None = None
        self._trace = trace
        self._tracer = stack.node.tracer
        device.start_xmit = self.xmit
        # br_netfilter: IPv4 frames bridged between two ports cross the root
        # namespace's netfilter hooks; the hook returns the (rewritten) frame or None
        self.nf_hook: NfHook | None = None

    def add_port(self, port: Interface) -> None:
        """``ip link set PORT master BRIDGE``: the port's frames come to :meth:`port_rx`."""
        port.enslave(self.device, self.port_rx)
        self.ports.append(port)

    def port_rx(self, port: Interface, frame: bytes | bytearray, now: float) -> None:
        """A frame received on a port (a veth enslaved to the bridge)."""
        size = len(frame)
        port.rx_packets += 1
        port.rx_bytes += size
        if port.taps:
            for tap in port.taps:
                tap(now, frame)
        if size < 14:
            self.stack.drop(now, port, Drop.MALFORMED, f"ethernet frame of {size} bytes")
            return
        if self._tracer.enabled:
            self._trace(now, "rx", f"bridge port of {self.name}", port.name)
        self.input(port, frame, now)

    def xmit(self, frame: bytes | bytearray, now: float) -> None:
        """The bridge device transmits: the frame enters the bridge from its local port."""
        self.input(None, frame, now)

    def remove_port(self, port: Interface) -> None:
        if port in self.ports:
            self.ports.remove(port)
        for mac in [m for m, e in self.fdb.items() if e.port is port]:
            self.forget(mac)

    def forget(self, mac: bytes) -> None:
        """Remove an entry; it ends infinitely old, so a flow holding it sees it is gone."""
        self.fdb.pop(mac).updated = FORGOTTEN

    def input(self, port: Interface | None, frame: bytes | bytearray, now: float) -> None:
        """A frame entering the bridge from ``port`` (``None``: from the bridge device)."""
        if type(frame) is bytes:  # slicing bytes gives bytes: no second copy
            dst, src = frame[0:6], frame[6:12]
        else:
            dst, src = bytes(frame[0:6]), bytes(frame[6:12])
        # learn the source, unless multicast or the bridge's own MAC (a local entry
        # in Linux's FDB, which br_fdb_update never moves to a port)
        if port is not None and not src[0] & 1 and src != self.mac:
            entry = self.fdb.get(src)
            if entry is None:
                self.fdb[src] = FdbEntry(port, now)
                if self._oldest is not None and now < self._oldest:
                    self._oldest = now
                if self._tracer.enabled:
                    self._trace(now, "fdb learn", f"{MAC(src)} on {port.name}", self.name)
            else:
                entry.port = port
                if now > entry.updated:  # the latest: a queue's steps need not come in time order
                    entry.updated = now
        if dst[0] & 1:
            if self._tracer.enabled:
                self._trace(
                    now, "flood", f"{'broadcast' if dst == MAC.BROADCAST else 'multicast'}", ""
                )
            self._flood(port, frame, now)
            if port is not None:
                self.stack.rx_frame(self.device, frame, now)
            return
        if dst == self.mac:
            if port is not None:
                if self._tracer.enabled:
                    self._trace(
                        now, "fdb local", f"{MAC(dst)} is {self.name}: up to the IP stack", ""
                    )
                self.stack.rx_frame(self.device, frame, now)
            return
        if port is not None and self.nf_hook is not None and frame[12:14] == b"\x08\x00":
            hooked = self.nf_hook(port, frame, now)
            if hooked is None:
                return
            frame = hooked
        self.forward(port, dst, frame, now)

    def forward(
        self, port: Interface | None, dst: bytes, frame: bytes | bytearray, now: float
    ) -> None:
        """The forwarding decision for a unicast frame: FDB hit, or flood."""
        entry = self.fdb.get(dst)
        if entry is not None and now < entry.updated + self.ageing_time:
            if entry.port is port:
                return  # destination is on the ingress segment: filtered
            if self._tracer.enabled:
                self._trace(now, "fdb hit", f"{MAC(dst)} on {entry.port.name}", "")
            self.stack.l2_xmit(entry.port, frame, now)
            return
        if self._tracer.enabled:
            self._trace(now, "fdb miss", f"{MAC(dst)} unknown: flood", "")
        self._flood(port, frame, now)

    def _flood(self, ingress: Interface | None, frame: bytes | bytearray, now: float) -> None:
        for p in self.ports:
            if p is not ingress:
                self.stack.l2_xmit(p, frame, now)

    def age(self, now: float) -> int:
        """Remove entries idle for longer than the ageing time; returns how many."""
        # compared as next_expiry's deadline is made: at that time the entry is old
        ageing = self.ageing_time
        old = [m for m, e in self.fdb.items() if now >= e.updated + ageing]
        for m in old:
            self.forget(m)
        self._oldest = None
        return len(old)

    def next_expiry(self) -> float | None:
        """When the oldest entry ages out: sometimes early (it was refreshed or
        forgotten since), never late; O(entries) once per ageing."""
        if not self.fdb:
            return None
        if self._oldest is None:
            self._oldest = min(e.updated for e in self.fdb.values())
        return self._oldest + self.ageing_time

    def show(self, now: float) -> list[tuple[MAC, str, float, bool]]:
        """``(mac, port, age seconds, is_local)`` rows, like ``brctl showmacs``."""
        rows = [(MAC(m), e.port.name, now - e.updated, False) for m, e in self.fdb.items()]
        rows.append((self.mac, self.name, 0.0, True))
        return rows
