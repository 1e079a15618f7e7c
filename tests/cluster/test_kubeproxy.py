"""kube-proxy's rules: names, probabilities, the iptables-restore / iptables-save dumps."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emunet.cluster import iptables
from emunet.cluster import kubeproxy as kp
from emunet.cluster.kubeproxy import (
    Endpoint,
    Service,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.errors import ConfigError

A = IPv4Address
CC = IPv4Network("10.244.0.0/16")


@pytest.mark.parametrize(
    ("spn", "proto", "chain"),
    [  # well-known names from real clusters
        ("kube-system/kube-dns:dns", "UDP", "KUBE-SVC-TCOU7JCQXEZGVUNU"),
        ("kube-system/kube-dns:dns-tcp", "TCP", "KUBE-SVC-ERIFXISQEP7F7OF4"),
        ("default/kubernetes:https", "TCP", "KUBE-SVC-NPX46M4PTMTKRN6Y"),
    ],
)
def test_chain_names_use_kube_proxy_hashing(spn: str, proto: str, chain: str) -> None:
    assert kp.svc_chain(spn, proto) == chain
    assert kp.ext_chain(spn, proto) == chain.replace("SVC", "EXT")
    assert kp.sep_chain(spn, proto, "10.244.0.2:53").startswith("KUBE-SEP-")
    assert len(kp.sep_chain(spn, proto, "10.244.0.2:53")) == len("KUBE-SEP-") + 16


@pytest.mark.parametrize(
    ("n", "text", "threshold"),
    [(2, "0.5000000000", 0x40000000), (3, "0.3333333333", 715827883), (4, "0.2500000000", 1 << 29)],
)
def test_probabilities(n: int, text: str, threshold: int) -> None:
    assert kp.probability(n) == text
    assert kp.statistic_threshold(n) == threshold


def two_endpoints(**kw: object) -> tuple[list[Service], dict[tuple[str, str], list[Endpoint]]]:
    svc = Service(
        "default",
        "web",
        A("10.96.0.10"),
        (ServicePort("http", "TCP", 80, 8080, kw.pop("node_port", 0)),),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    eps = [Endpoint(A("10.244.2.5"), "node2", port_name="http"),
           Endpoint(A("10.244.1.5"), "node1", port_name="http")]  # fmt: skip
    return [svc], {("default", "web"): eps}


def test_restore_dump_for_two_endpoints() -> None:
    rs = iptables.build_ruleset(*two_endpoints(), node="node1", cluster_cidr=CC)
    text = rs.iptables_restore()
    svc = kp.svc_chain("default/web:http", "tcp")
    sep1 = kp.sep_chain("default/web:http", "tcp", "10.244.1.5:8080")
    sep2 = kp.sep_chain("default/web:http", "tcp", "10.244.2.5:8080")
    assert (
        f'-A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp '
        f"-d 10.96.0.10 --dport 80 -j {svc}"
    ) in text
    lines = [r.restore_line() for r in rs.chain("nat", svc)]
    assert lines == [
        f'-A {svc} -m comment --comment "default/web:http cluster IP" -m tcp -p tcp '
        f"-d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
        f'-A {svc} -m comment --comment "default/web:http -> 10.244.1.5:8080" '
        f"-m statistic --mode random --probability 0.5000000000 -j {sep1}",
        f'-A {svc} -m comment --comment "default/web:http -> 10.244.2.5:8080" -j {sep2}',
    ]
    assert [r.restore_line() for r in rs.chain("nat", sep1)] == [
        f"-A {sep1} -m comment --comment default/web:http -s 10.244.1.5 -j KUBE-MARK-MASQ",
        f"-A {sep1} -m comment --comment default/web:http -m tcp -p tcp "
        "-j DNAT --to-destination 10.244.1.5:8080",
    ]
    assert text.startswith("*filter\n:KUBE-SERVICES - [0:0]\n")


def test_save_dump_for_two_endpoints() -> None:
    rs = iptables.build_ruleset(*two_endpoints(), node="node1", cluster_cidr=CC)
    text = rs.iptables_save()
    svc = kp.svc_chain("default/web:http", "tcp")
    sep1 = kp.sep_chain("default/web:http", "tcp", "10.244.1.5:8080")
    sep2 = kp.sep_chain("default/web:http", "tcp", "10.244.2.5:8080")
    for line in (
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        f":{svc} - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f'-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http '
        f'cluster IP" -m tcp --dport 80 -j {svc}',
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
        'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        f"-A {svc} ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "
        f'"default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ',
        f'-A {svc} -m comment --comment "default/web:http -> 10.244.1.5:8080" '
        f"-m statistic --mode random --probability 0.50000000000 -j {sep1}",
        f'-A {svc} -m comment --comment "default/web:http -> 10.244.2.5:8080" -j {sep2}',
        f'-A {sep1} -s 10.244.1.5/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ',
        f'-A {sep1} -p tcp -m comment --comment "default/web:http" -m tcp '
        "-j DNAT --to-destination 10.244.1.5:8080",
        "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "
        '"flanneld masq" -j MASQUERADE --random-fully',
        "*filter",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    ):
        assert line in text.splitlines(), line
    # KUBE-NODEPORTS jump is the last rule of nat KUBE-SERVICES
    nat = text.split("*filter")[0]
    ks = [ln for ln in nat.splitlines() if ln.startswith("-A KUBE-SERVICES ")]
    assert ks[-1].endswith("-j KUBE-NODEPORTS")


def test_three_endpoints_quantised_probability_in_save() -> None:
    svcs, eps = two_endpoints()
    eps[("default", "web")].append(Endpoint(A("10.244.3.5"), "node3", port_name="http"))
    text = iptables.build_ruleset(svcs, eps, node="n", cluster_cidr=CC).iptables_save()
    assert "--probability 0.33333333349" in text  # 0.3333333333 as the kernel stores it
    assert "--probability 0.50000000000" in text


def test_affinity_rules() -> None:
    rs = iptables.build_ruleset(
        *two_endpoints(session_affinity=SessionAffinity.CLIENT_IP),
        node="node1",
        cluster_cidr=CC,
    )
    svc = kp.svc_chain("default/web:http", "tcp")
    sep1 = kp.sep_chain("default/web:http", "tcp", "10.244.1.5:8080")
    save = rs.iptables_save().splitlines()
    assert (
        f'-A {svc} -m comment --comment "default/web:http -> 10.244.1.5:8080" -m recent '
        f"--rcheck --seconds 10800 --reap --name {sep1} --mask 255.255.255.255 --rsource "
        f"-j {sep1}"
    ) in save
    assert (
        f'-A {sep1} -p tcp -m comment --comment "default/web:http" -m recent --set '
        f"--name {sep1} --mask 255.255.255.255 --rsource -m tcp "
        "-j DNAT --to-destination 10.244.1.5:8080"
    ) in save


def test_nodeport_rules_cluster_and_local() -> None:
    ext = kp.ext_chain("default/web:http", "tcp")
    svl = kp.svl_chain("default/web:http", "tcp")
    rs = iptables.build_ruleset(
        *two_endpoints(type=ServiceType.NODE_PORT, node_port=30080), node="node1", cluster_cidr=CC
    )
    assert [r.save_line() for r in rs.chain("nat", "KUBE-NODEPORTS")] == [
        '-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp '
        f"--dport 30080 -j {ext}"
    ]
    assert rs.chain("nat", ext)[0].save_line() == (
        f'-A {ext} -m comment --comment "masquerade traffic for default/web:http external '
        'destinations" -j KUBE-MARK-MASQ'
    )
    local = iptables.build_ruleset(
        *two_endpoints(
            type=ServiceType.NODE_PORT,
            node_port=30080,
            external_traffic_policy=TrafficPolicy.LOCAL,
        ),
        node="node1",
        cluster_cidr=CC,
    )
    assert local.chain("nat", ext)[-1].save_line() == f"-A {ext} -j {svl}"
    assert len(local.chain("nat", svl)) == 1  # only node1's endpoint
    nolocal = iptables.build_ruleset(
        *two_endpoints(
            type=ServiceType.NODE_PORT,
            node_port=30080,
            external_traffic_policy=TrafficPolicy.LOCAL,
        ),
        node="node9",
        cluster_cidr=CC,
    )
    assert [r.save_line() for r in nolocal.chain("filter", "KUBE-EXTERNAL-SERVICES")] == [
        '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "default/web:http has no local '
        'endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP'
    ]


def test_no_endpoints_reject_in_filter() -> None:
    svcs, _ = two_endpoints()
    rs = iptables.build_ruleset(svcs, {}, node="node1", cluster_cidr=CC)
    assert [r.save_line() for r in rs.chain("filter", "KUBE-SERVICES")] == [
        '-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http has '
        'no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable'
    ]
    assert not rs.chain("nat", kp.svc_chain("default/web:http", "tcp"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"affinity_timeout": 0}, "timeout"),
        ({"ports": (ServicePort("a", "SCTP", 80, 80),)}, "protocol"),
        ({"ports": (ServicePort("", "TCP", 80, 80, 30001),)}, "nodePort needs type"),
        ({"ports": (ServicePort("a", "TCP", 80, 80), ServicePort("a", "TCP", 81, 80))}, "unique"),
        ({"type": ServiceType.NODE_PORT, "ports": (ServicePort("", "TCP", 80, 80, 80),)}, "30000"),
    ],
)
def test_validation(change: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "namespace": "d",
        "name": "s",
        "cluster_ip": A("10.96.0.1"),
        "ports": (ServicePort("", "TCP", 80, 80),),
    }
    base.update(change)
    with pytest.raises(ConfigError, match=message):
        kp.validate([Service(**base)])  # type: ignore[arg-type]


_PROTO = st.sampled_from([6, 17, 132])
_ADDR = st.integers(0, 2**32 - 1)
_PORT = st.integers(0, 65535)


@given(st.tuples(_PROTO, _ADDR, _PORT), st.tuples(_PROTO, _ADDR, _PORT))
def test_address_keys_tell_ports_apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    """One int key per (protocol, address, port): equal exactly when the triples are."""
    assert (kp.address_key(*a) == kp.address_key(*b)) == (a == b)


def test_services_of_one_port_start_in_different_dict_slots() -> None:
    """A dict's first probe is the key's low bits (an int hashes to itself):
    10,000 port-80 Services at consecutive addresses must not share them, or each
    new connection walks a chain of probes (a cold cache line each)."""
    base = int(A("10.96.0.16"))
    keys = [kp.address_key(6, base + i, 80) for i in range(10_000)]
    assert len({hash(k) & (2**14 - 1) for k in keys}) == 10_000  # a 16,384-slot table


@given(st.tuples(_PROTO, _PORT), st.tuples(_PROTO, _PORT))
def test_node_port_keys_tell_ports_apart(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (kp.node_port_key(*a) == kp.node_port_key(*b)) == (a == b)


def test_tables_are_keyed_by_one_int_per_port() -> None:
    svc = Service(
        "d", "s", A("10.96.0.7"), (ServicePort("", "UDP", 53, 5353, 30053),),
        type=ServiceType.LOAD_BALANCER, load_balancer_ip=A("192.0.2.7"),
    )  # fmt: skip
    table = kp.compile_services([svc], {}, "node1")
    (info,) = table.ports
    assert table.by_cluster_ip == {kp.address_key(17, int(A("10.96.0.7")), 53): info}
    assert table.by_lb_ip == {kp.address_key(17, int(A("192.0.2.7")), 53): info}
    assert table.by_node_port == {kp.node_port_key(17, 30053): info}
