"""Golden comparison with the real Linux kernel (issue 4, acceptance point 8).

The same two-node cluster is built twice: in emunet's in-memory fabric, and for
real with network namespaces::

    lan  (bridge br0: the node network 172.18.0.0/16)
     |-- n1: eth0 172.18.0.2, cni0 10.244.1.1/24, flannel0 10.244.1.0/32
     |     `-- client pod 10.244.1.2 (veth on cni0, hairpin on)
     |-- n2: eth0 172.18.0.3, cni0 10.244.2.1/24, flannel0 10.244.2.0/32
     |     `-- ep2 pod 10.244.2.2
     `-- vm: 172.18.0.100 (a machine next to the nodes, outside the cluster)

flannel's udp backend is a userspace daemon; the kernel side replaces it with a
veth pair named ``flannel0`` on both nodes holding the same /32 addresses (and
an onlink route to the peer subnet), which is what the NAT decisions see: the
out-interface and its address. Each node namespace gets the iptables rules
emunet's kube-proxy writes for it (``Netfilter.ruleset().iptables_restore()``,
fed to ``iptables-restore``), ``bridge-nf-call-iptables=1`` and ip_forward.

Scenarios, each compared on what each side sees and on the ``conntrack -L``
tuples of both nodes (timeouts and states ignored; the client's source port is
written ``S`` and ports chosen by ``--random-fully`` ``*``):

* pod -> ClusterIP (UDP and TCP) with 2 endpoints: the client pod itself
  (hairpin) and ep2 on the other node; connections are repeated until both
  endpoints were chosen (the choice is random on both sides);
* a Service without endpoints: the ICMP error (type, code, offender) a UDP
  client gets and ECONNREFUSED for TCP;
* NodePort from the vm to each node IP, externalTrafficPolicy Cluster (both
  endpoints) and Local (endpoint on n2 only: n1 drops).

Only private addresses are used, inside namespaces this test creates and
deletes (also on failure).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from emunet.cluster.kubeproxy import Endpoint, Service, ServicePort, ServiceType, TrafficPolicy
from emunet.dataplane.fabric import Fabric
from emunet.dataplane.netns import Namespace
from emunet.dataplane.tcp import TCPConnection

pytestmark = pytest.mark.netns

A = IPv4Address
PEER = Path(__file__).resolve().parents[2] / "scripts" / "golden" / "peer.py"
KNOWN_PORTS = {"80", "8080", "30080", "30081"}
Result = dict[str, object]
Obs = tuple[str, ...]


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables-restore", "conntrack"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install iptables conntrack iproute2)"
    probe = f"emgp{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if r.returncode != 0:
        return f"ip netns unavailable: {r.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# --- the scenario, shared by both worlds ---------------------------------------------


def services() -> tuple[list[Service], dict[tuple[str, str], list[Endpoint]]]:
    client, ep2 = A("10.244.1.2"), A("10.244.2.2")
    both = [Endpoint(client, "node1", port_name="http"), Endpoint(ep2, "node2", port_name="http")]

    def svc(name: str, ip: str, proto: str, node_port: int = 0, **kw: object) -> Service:
        typ = ServiceType.NODE_PORT if node_port else ServiceType.CLUSTER_IP
        return Service(
            "default",
            name,
            A(ip),
            (ServicePort("http", proto, 80, 8080, node_port),),
            type=typ,
            **kw,  # type: ignore[arg-type]
        )

    svcs = [
        svc("web", "10.96.0.20", "UDP"),
        svc("tweb", "10.96.0.21", "TCP"),
        svc("empty", "10.96.0.30", "UDP"),
        svc("tempty", "10.96.0.31", "TCP"),
        svc("np", "10.96.0.40", "UDP", 30080),
        svc("nplocal", "10.96.0.41", "UDP", 30081, external_traffic_policy=TrafficPolicy.LOCAL),
    ]
    eps = {
        ("default", "web"): both,
        ("default", "tweb"): both,
        ("default", "np"): both,
        ("default", "nplocal"): [both[1]],
    }
    return svcs, eps


def normalize(listing: list[str], sport: int) -> tuple[str, ...]:
    """conntrack -L lines -> tuples only, the client port as S, NAT-chosen ports as *."""
    out = []
    for line in listing:
        tuples = re.findall(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)", line)
        if len(tuples) != 2:
            continue

        def port(p: str) -> str:
            return "S" if p == str(sport) else p if p in KNOWN_PORTS else "*"

        text = " | ".join(f"{s}:{port(sp)} > {d}:{port(dp)}" for s, d, sp, dp in tuples)
        out.append(f"{line.split()[0]} {text}")
    return tuple(sorted(out))


# --- the kernel ------------------------------------------------------------------------


class Kernel:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []
        self.servers: list[subprocess.Popen[str]] = []

    def ns(self, name: str) -> str:
        return self.prefix + name

    def sh(self, *argv: str, ns: str | None = None) -> str:
        cmd = ["ip", "netns", "exec", self.ns(ns), *argv] if ns else list(argv)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r.stdout

    def ip(self, ns: str, *args: str) -> None:
        self.sh("ip", "-n", self.ns(ns), *args)

    def add_ns(self, name: str) -> None:
        self.sh("ip", "netns", "add", self.ns(name))
        self.names.append(name)
        self.sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=name)
        self.sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", ns=name)
        self.ip(name, "link", "set", "lo", "up")

    def veth(self, a_ns: str, a: str, b_ns: str, b: str) -> None:
        self.sh("ip", "link", "add", "emgtmp0", "netns", self.ns(a_ns), "type", "veth",
                "peer", "name", "emgtmp1", "netns", self.ns(b_ns))  # fmt: skip
        self.ip(a_ns, "link", "set", "emgtmp0", "name", a)
        self.ip(b_ns, "link", "set", "emgtmp1", "name", b)
        self.ip(a_ns, "link", "set", a, "up")
        self.ip(b_ns, "link", "set", b, "up")

    def build(self, rules: dict[str, str]) -> None:
        for name in ("lan", "n1", "n2", "client", "ep2", "vm"):
            self.add_ns(name)
        self.ip("lan", "link", "add", "br0", "type", "bridge")
        self.ip("lan", "link", "set", "br0", "up")
        for i, (node, n) in enumerate((("n1", 1), ("n2", 2), ("vm", 0))):
            self.veth(node, "eth0", "lan", f"p{i}")
            self.ip("lan", "link", "set", f"p{i}", "master", "br0")
            addr = f"172.18.0.{n + 1}/16" if n else "172.18.0.100/16"
            self.ip(node, "addr", "add", addr, "dev", "eth0")
        self.veth("n1", "flannel0", "n2", "flannel0")
        for node, n, pod, pod_ip in (("n1", 1, "client", 2), ("n2", 2, "ep2", 2)):
            self.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)
            self.sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", ns=node)
            self.ip(node, "link", "add", "cni0", "type", "bridge")
            self.ip(node, "addr", "add", f"10.244.{n}.1/24", "dev", "cni0")
            self.ip(node, "link", "set", "cni0", "up")
            self.ip(node, "addr", "add", f"10.244.{n}.0/32", "dev", "flannel0")
            peer = 3 - n
            self.ip(node, "route", "add", f"10.244.{peer}.0/24", "via", f"10.244.{peer}.0",
                    "dev", "flannel0", "onlink")  # fmt: skip
            # the nodes' default route (nothing answers there: nothing is sent there)
            self.ip(node, "route", "add", "default", "via", "172.18.0.1", "dev", "eth0")
            self.veth(pod, "eth0", node, "veth0")
            self.ip(node, "link", "set", "veth0", "master", "cni0")
            self.sh("bridge", "link", "set", "dev", "veth0", "hairpin", "on", ns=node)
            self.ip(pod, "addr", "add", f"10.244.{n}.{pod_ip}/24", "dev", "eth0")
            self.ip(pod, "route", "add", "default", "via", f"10.244.{n}.1")
            r = subprocess.run(
                ["ip", "netns", "exec", self.ns(node), "iptables-restore"],
                input=rules[node], capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"iptables-restore on {node}: {r.stderr}")
        for pod in ("client", "ep2"):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(pod), sys.executable, str(PEER), "serve", pod,
                 "8080"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            self.servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def cleanup(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait(timeout=5)
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", self.ns(name)], capture_output=True)

    # the World API
    def client(self, ns: str, proto: str, dst: str, port: int, sport: int, t: float) -> Result:
        out = self.sh(sys.executable, str(PEER), proto, dst, str(port), str(sport), str(t), ns=ns)
        result: Result = json.loads(out)
        return result

    def flush(self) -> None:
        for node in ("n1", "n2"):
            subprocess.run(["ip", "netns", "exec", self.ns(node), "conntrack", "-F"],
                           capture_output=True)  # fmt: skip

    def conntrack(self, node: str) -> list[str]:
        return self.sh("conntrack", "-L", "-f", "ipv4", ns=node).splitlines()


# --- emunet ----------------------------------------------------------------------------


class Emunet:
    def __init__(self) -> None:
        self.fab = Fabric(nodes=2, seed=21)
        self.pods = {
            "client": self.fab.add_pod("node1", "client"),
            "ep2": self.fab.add_pod("node2", "ep2"),
        }
        self.vm = self.fab.add_host("vm", "172.18.0.100", segment="nodes")
        svcs, eps = services()
        self.fab.set_services(svcs, eps)
        for name, pod in self.pods.items():
            self._serve(name, pod.netns)

    def _serve(self, name: str, ns: Namespace) -> None:
        fab = self.fab
        sock = ns.udp_socket()
        sock.bind(port=8080)

        def on_udp() -> None:
            while (msg := sock.recvfrom()) is not None:
                ip, port = msg[1]
                sock.sendto(f"{name} {ip}:{port}".encode(), msg[1], fab.now)

        sock.on_event = on_udp
        listener = ns.tcp_listen(8080)

        def on_accept() -> None:
            while (conn := listener.accept()) is not None:
                conn.send(f"{name} {conn.remote_ip}:{conn.remote_port}".encode(), conn.now)
                conn.close(conn.now)

        listener.on_event = on_accept

    def rules(self) -> dict[str, str]:
        out = {}
        for node, name in (("n1", "node1"), ("n2", "node2")):
            nf = self.fab.node(name).netfilter
            assert nf is not None
            out[node] = nf.ruleset().iptables_restore()
        return out

    def _ns(self, name: str) -> Namespace:
        return self.vm.netns if name == "vm" else self.pods[name].netns

    def client(self, ns: str, proto: str, dst: str, port: int, sport: int, t: float) -> Result:
        fab = self.fab
        if proto == "udp":
            sock = self._ns(ns).udp_socket()
            sock.bind(port=sport)
            sock.sendto(b"?", (dst, port), fab.now)
            fab.run(t)
            sock.close()
            if sock.rx:
                data, (ip, p) = sock.rx[0]
                return {"reply": data.decode(), "from": f"{ip}:{p}"}
            if sock.errors:
                ev = sock.errors[0]
                return {
                    "error": ev.errno_name,
                    "icmp": [ev.icmp_type, ev.icmp_code],
                    "offender": str(ev.offender),
                }
            return {"timeout": True}
        conn: TCPConnection = self._ns(ns).tcp_connect(dst, port, fab.now)
        got = bytearray()

        def on_event() -> None:
            if conn.error is not None:
                return
            got.extend(conn.recv())
            if conn.state.name == "CLOSE_WAIT":
                conn.close(fab.now)

        conn.on_event = on_event
        fab.run(t)
        if conn.error is not None:
            return {"error": conn.error}
        self.last_sport = conn.local_port
        return {"reply": got.decode(), "from": f"{conn.remote_ip}:{conn.remote_port}"}

    def flush(self) -> None:
        for node in self.fab.nodes.values():
            assert node.netfilter is not None
            node.netfilter.conntrack.flush(lambda e: True)

    def conntrack(self, node: str) -> list[str]:
        name = {"n1": "node1", "n2": "node2"}[node]
        return self.fab.node(name).conntrack_listing(self.fab.now).splitlines()


# --- running a scenario in one world --------------------------------------------------------

World = Kernel | Emunet


def observe(
    world: World, ns: str, proto: str, dst: str, port: int, sport: int, t: float = 1.0
) -> tuple[str, Obs]:
    """One new connection: (endpoint that answered, what everybody saw)."""
    world.flush()
    res = world.client(ns, proto, dst, port, sport, t)
    if isinstance(world, Emunet) and proto == "tcp" and "reply" in res:
        sport = world.last_sport  # emunet picks the TCP source port itself
    if "reply" not in res:
        return "-", (json.dumps(res, sort_keys=True),)
    endpoint, saw = str(res["reply"]).split()
    ip, p = saw.split(":")
    saw_norm = f"{ip}:{'S' if p == str(sport) else '*'}"
    return endpoint, (
        f"backend saw {saw_norm}",
        f"client got reply from {res['from']}",
        *(f"n1 {x}" for x in normalize(world.conntrack("n1"), sport)),
        *(f"n2 {x}" for x in normalize(world.conntrack("n2"), sport)),
    )


def until_both(run: Callable[[int], tuple[str, Obs]], base: int) -> dict[str, set[Obs]]:
    """Repeat new connections until both endpoints answered (random choice)."""
    seen: dict[str, set[Obs]] = {}
    for i in range(40):
        endpoint, obs = run(base + i)
        seen.setdefault(endpoint, set()).add(obs)
        if {"client", "ep2"} <= seen.keys():
            break
    return seen


def scenarios(world: World) -> dict[str, object]:
    out: dict[str, object] = {}
    out["clusterip udp (hairpin + remote)"] = until_both(
        lambda s: observe(world, "client", "udp", "10.96.0.20", 80, s), 41000
    )
    out["clusterip tcp (hairpin + remote)"] = until_both(
        lambda s: observe(world, "client", "tcp", "10.96.0.21", 80, s), 42000
    )
    out["no endpoints udp"] = observe(world, "client", "udp", "10.96.0.30", 80, 43000)
    out["no endpoints tcp"] = observe(world, "client", "tcp", "10.96.0.31", 80, 43001)
    for node, ip in (("n1", "172.18.0.2"), ("n2", "172.18.0.3")):

        def via(sport: int, ip: str = ip) -> tuple[str, Obs]:
            return observe(world, "vm", "udp", ip, 30080, sport)

        out[f"nodeport cluster via {node}"] = until_both(via, 44000 + 100 * int(node[1]))
        out[f"nodeport local via {node}"] = observe(world, "vm", "udp", ip, 30081, 45000, 0.5)
    return out


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    reason = _netns_available()
    if reason is not None:
        pytest.skip(reason)
    k = Kernel(f"emg{os.getpid() % 100000}-")
    try:
        yield k
    finally:
        k.cleanup()


def test_kernel_and_emunet_agree_on_services(kernel: Kernel) -> None:
    emu = Emunet()
    kernel.build(emu.rules())
    real = scenarios(kernel)
    emulated = scenarios(emu)
    for name in real:
        assert emulated[name] == real[name], name
    # and the comparison is not vacuous: the expected facts hold
    hairpin = real["clusterip udp (hairpin + remote)"]
    assert isinstance(hairpin, dict)
    assert {"client", "ep2"} <= hairpin.keys()
    (obs,) = hairpin["client"]
    assert obs[0] == "backend saw 10.244.1.1:*" and obs[1] == "client got reply from 10.96.0.20:80"
    empty = real["no endpoints udp"]
    assert isinstance(empty, tuple) and '"icmp": [3, 3]' in empty[1][0]
    assert '"offender": "10.244.1.1"' in empty[1][0]
    local = real["nodeport local via n2"]
    assert isinstance(local, tuple) and local[1][0] == "backend saw 172.18.0.100:S"
    assert real["nodeport local via n1"] == ("-", ('{"timeout": true}',))
