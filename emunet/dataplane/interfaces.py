"""Network interfaces of a namespace, with Linux's names and counters.

One class with a ``kind`` rather than a hierarchy. What a device does with a
frame or packet is what its owner plugs in, as Linux's drivers and rx_handlers
do: ``receive`` (its namespace's ``rx_frame``, or its bridge's ``port_rx`` once
enslaved), ``start_xmit`` (the bridge device: into its bridge) and ``driver``
(an L3 device's transmit: flanneld for ``flannel0``, the node network for
``eth0``). This module imports nothing of the data plane: every part above it
may use it.

* ``loopback`` (``lo``): L3, what is sent is received in the same namespace.
* ``veth``: L2, one end of a pair; what one end sends the ``peer`` receives.
  A veth whose ``master`` is a bridge is a bridge port (no addresses).
* ``bridge`` (``cni0``): L2 device with its own MAC and addresses; sending on
  it is entering the bridge from its local port.
* ``tun`` (``flannel0``): L3, packets sent go to the overlay (flanneld's read).
* ``underlay`` (node ``eth0``): L3 link to the node network; packets sent
  leave the node (an action for the adapter).
* ``dummy`` (``kube-ipvs0``): holds addresses and nothing else; kube-proxy's
  IPVS mode binds every ClusterIP to it, which makes them local addresses.

Every interface has a ``delay``, taken from :data:`HOP_DELAY` for its kind: the
modelled time from its transmit to the far side's receive.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Interface
from typing import Final, Protocol

from emunet.packets.mac import MAC

LOOPBACK: Final = "loopback"
VETH: Final = "veth"
BRIDGE: Final = "bridge"
TUN: Final = "tun"
UNDERLAY: Final = "underlay"
DUMMY: Final = "dummy"

L2_KINDS: Final = frozenset({VETH, BRIDGE})

HOP_DELAY: Final[dict[str, float]] = {
    VETH: 8e-6,
    BRIDGE: 4e-6,
    LOOPBACK: 5e-6,
    TUN: 20e-6,
    UNDERLAY: 5e-6,
    DUMMY: 0.0,
}
"""Seconds from a device's transmit to the receive on its far side, by kind: a
model, as netem's ``delay`` is, not a measurement (nothing reads a clock per
packet). The step that receives runs at the transmit's ``now`` plus the delay,
so a packet's time moves as it crosses a machine; a step's work itself takes no
time. Each figure lumps in what a real node spends around the hop (the softirq
backlog, the socket wakeups of the end hosts):

* ``veth``: one end's transmit to the other end's receive (``veth_xmit`` ->
  the peer's backlog);
* ``bridge``: a frame entering the bridge (from a port, or the bridge device's
  own transmit) until it leaves it (out of a port, or up to the device);
* ``loopback``: ``lo``'s transmit to its own receive;
* ``tun``: a packet handed between ``flannel0`` and flanneld, either way (a
  ``read``/``write`` on the TUN with flanneld's wakeup);
* ``underlay``: eth0's transmit onto the node network (the wire itself is the
  adapter's, or the in-memory fabric's link delay);
* ``dummy``: never transmits.

A same-node pod-to-pod ping crosses veth, bridge, veth each way: an RTT of
2 x 20 us = 40 us, as on a real node (20-50 us through veth pairs and a bridge).
Set one interface's ``delay`` to change one device only (``tc qdisc ... netem
delay``).
"""

# A tap sees (now, bytes) for every frame/packet received or sent.
Tap = Callable[[float, bytes | bytearray], None]
# What takes a frame arriving on an L2 interface (Linux's rx_handler).
RxHandler = Callable[["Interface", bytes | bytearray, float], None]
# A driver's transmit of an L2 device (the bridge device: into the bridge).
StartXmit = Callable[[bytes | bytearray, float], None]
# A driver's transmit of an L3 device (a packet and its next hop): flanneld
# reading flannel0, or the node's eth0 putting it on the node network.
L3Xmit = Callable[[bytearray, bytes, float], None]


class Stack(Protocol):
    """The namespace an interface belongs to, as the interface sees it."""

    name: str

    def rx_frame(self, iface: Interface, frame: bytes | bytearray, now: float) -> None: ...


class Interface:
    __slots__ = (
        "addresses",
        "delay",
        "driver",
        "index",
        "kind",
        "mac",
        "master",
        "mtu",
        "name",
        "netns",
        "peer",
        "receive",
        "rx_bytes",
        "rx_dropped",
        "rx_packets",
        "start_xmit",
        "taps",
        "tx_bytes",
        "tx_dropped",
        "tx_packets",
        "up",
    )

    def __init__(
        self,
        netns: Stack,
        name: str,
        kind: str,
        *,
        index: int,
        mac: MAC | None = None,
        mtu: int = 1500,
    ) -> None:
        self.netns = netns
        self.name = name
        self.kind = kind
        self.index = index
        self.mac = mac
        self.mtu = mtu
        self.up = True
        self.delay = HOP_DELAY[kind]  # see HOP_DELAY
        self.addresses: list[IPv4Interface] = []
        self.peer: Interface | None = None
        self.master: Interface | None = None  # the bridge device this port belongs to
        self.start_xmit: StartXmit | None = None  # the bridge device: into its bridge
        self.driver: L3Xmit | None = None  # flannel0 (flanneld), eth0 (the node network)
        self.taps: list[Tap] = []
        # what takes a frame arriving on this L2 interface: its namespace's
        # rx_frame, or its bridge's port_rx once it is a bridge port (enslave)
        self.receive: RxHandler = netns.rx_frame
        self.rx_packets = 0
        self.rx_bytes = 0
        self.rx_dropped = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.tx_dropped = 0

    def enslave(self, master: Interface, rx_handler: RxHandler) -> None:
        """``ip link set dev VETH master BRIDGE``: a bridge port from now on, its
        frames taken by the bridge's ``rx_handler``."""
        self.master = master
        self.receive = rx_handler

    @property
    def is_l2(self) -> bool:
        return self.kind in L2_KINDS

    @property
    def linktype(self) -> int:
        """The pcap link type a capture on this interface uses."""
        return 1 if self.is_l2 else 101

    def counters(self) -> dict[str, int]:
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "rx_dropped": self.rx_dropped,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "tx_dropped": self.tx_dropped,
        }

    def __repr__(self) -> str:
        return f"<Interface {self.netns.name}/{self.name} {self.kind}>"
