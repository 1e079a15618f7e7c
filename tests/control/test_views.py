"""What the CLI prints, from objects alone (no fabric, no clock)."""

from __future__ import annotations

import datetime
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from emunet.control import views
from emunet.control.views import Table

from emunet.cluster.registry import (
    Container,
    ContainerPort,
    Deployment,
    ExternalHostInfo,
    NodeInfo,
    Pod,
    PodPhase,
    PodTemplate,
    Service,
    ServicePortSpec,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)

NOW = datetime.datetime(2024, 1, 2, 0, 0, 0, tzinfo=datetime.UTC)
CREATED = "2024-01-01T23:59:00Z"  # 60 s before NOW

HTTP = Container("web", "http", {"port": 80}, (ContainerPort(80, "TCP", "http"),))


def running(name: str, ip: str, node: str = "node1", **changes: Any) -> Pod:
    pod = Pod(name, labels={"app": "web"}, node_name=node, containers=(HTTP,), owner="web",
              created=CREATED)  # fmt: skip
    pod = pod.with_status(PodPhase.RUNNING, IPv4Address(ip), IPv4Address("192.168.0.11"))
    return replace(pod, **changes)


WEB = Service(
    "web",
    type=ServiceType.NODE_PORT,
    selector={"app": "web"},
    ports=(ServicePortSpec(8080, 80, "TCP", "", 30080),),
    cluster_ip=IPv4Address("10.96.0.10"),
    created=CREATED,
)


def test_table_lines_align_columns_three_spaces_apart() -> None:
    table = Table(["NAME", "X"], [["a", "longer"], ["bbbbbb", ""]])
    assert views.table_lines(table) == ["NAME     X", "a        longer", "bbbbbb"]
    assert views.table_lines(Table(["A", "B"])) == ["A   B"]


@pytest.mark.parametrize(
    ("created", "shown"),
    [
        ("", "<unknown>"),
        ("yesterday", "<unknown>"),
        ("2024-01-02T00:00:00Z", "0s"),
        ("2024-01-02T00:00:05Z", "0s"),  # a clock behind the writer's: not negative
        ("2024-01-01T23:58:01Z", "119s"),
        ("2024-01-01T23:58:00Z", "2m"),
        ("2024-01-01T23:00:01Z", "59m"),
        ("2024-01-01T23:00:00Z", "1h"),
        ("2023-12-31T00:00:01Z", "47h"),
        ("2023-12-31T00:00:00Z", "2d"),
        ("2023-12-01T00:00:00Z", "32d"),
    ],
)
def test_age(created: str, shown: str) -> None:
    assert views.age(created, NOW) == shown


def test_labels_text() -> None:
    assert views.labels_text({}) == "<none>"
    assert views.labels_text({"b": "2", "a": "1"}) == "a=1,b=2"


NODES = [
    NodeInfo("node1", IPv4Address("127.0.0.11"), IPv4Network("10.244.1.0/24"), "127.0.0.1:1",
             True),
    NodeInfo("node2", IPv4Address("127.0.0.12")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("wide", "table"),
    [
        (False, Table(["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"], [
            ["node1", "Ready", "127.0.0.11", "10.244.1.0/24"],
            ["node2", "NotReady", "127.0.0.12", "<none>"],
        ])),
        (True, Table(["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "CONTROL"], [
            ["node1", "Ready", "127.0.0.11", "10.244.1.0/24", "127.0.0.1:1"],
            ["node2", "NotReady", "127.0.0.12", "<none>", "<none>"],
        ])),
    ],
)  # fmt: skip
def test_nodes_table(wide: bool, table: Table) -> None:
    assert views.nodes_table(NODES, wide) == table


HOSTS = [
    ExternalHostInfo("client", IPv4Address("203.0.113.20"), "internet", "host",
                     ("http:80/tcp", "echo:7/udp")),
    ExternalHostInfo("gateway", IPv4Address("192.168.0.1"), "nodes", "gateway", (), "",
                     IPv4Address("198.51.100.1")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("wide", "table"),
    [
        (False, Table(["NAME", "SEGMENT", "IP"], [
            ["client", "internet", "203.0.113.20"], ["gateway", "nodes", "192.168.0.1"],
        ])),
        (True, Table(["NAME", "SEGMENT", "IP", "ROLE", "PUBLIC-IP", "APPS"], [
            ["client", "internet", "203.0.113.20", "host", "<none>", "http:80/tcp,echo:7/udp"],
            ["gateway", "nodes", "192.168.0.1", "gateway", "198.51.100.1", "<none>"],
        ])),
    ],
)  # fmt: skip
def test_hosts_table(wide: bool, table: Table) -> None:
    assert views.hosts_table(HOSTS, wide) == table


PODS = [
    running("web-b", "10.244.1.3"),
    running("web-a", "10.244.1.2", ready=False),
    Pod("pending", namespace="kube", containers=(HTTP, HTTP), reason="Unschedulable"),
]


@pytest.mark.parametrize(
    ("namespace", "wide", "table"),
    [
        ("default", False, Table(["NAME", "READY", "STATUS", "IP", "NODE", "AGE"], [
            ["web-a", "0/1", "Running", "10.244.1.2", "node1", "60s"],
            ["web-b", "1/1", "Running", "10.244.1.3", "node1", "60s"],
        ])),
        (None, True, Table(
            ["NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE", "AGE", "APP", "HOST-IP",
             "LABELS"],
            [
                ["default", "web-a", "0/1", "Running", "10.244.1.2", "node1", "60s", "http",
                 "192.168.0.11", "app=web"],
                ["default", "web-b", "1/1", "Running", "10.244.1.3", "node1", "60s", "http",
                 "192.168.0.11", "app=web"],
                ["kube", "pending", "0/2", "Unschedulable", "<none>", "<none>", "<unknown>",
                 "http,http", "<none>", "<none>"],
            ],
        )),
    ],
)  # fmt: skip
def test_pods_table(namespace: str | None, wide: bool, table: Table) -> None:
    pods = [p for p in PODS if namespace is None or p.namespace == namespace]
    assert views.pods_table(pods, namespace, wide, NOW) == table


def test_deployments_table_counts_the_pods_each_owns() -> None:
    web = Deployment("web", replicas=3, template=PodTemplate({"app": "web"}, (HTTP,)),
                     created=CREATED)  # fmt: skip
    idle = Deployment("idle", replicas=0, template=PodTemplate({}, (HTTP, replace(HTTP,
                      app="echo"))))  # fmt: skip
    pods = [
        running("web-1", "10.244.1.2"),
        running("web-2", "10.244.1.3").with_status(PodPhase.PENDING),
        running("web-3", "10.244.1.4", namespace="other"),  # another namespace's
        running("other-1", "10.244.1.5", owner="other"),
    ]
    assert views.deployments_table([web, idle], pods, False, NOW) == Table(
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        [["idle", "0/0", "0", "0", "<unknown>"], ["web", "1/3", "2", "1", "60s"]],
    )
    wide = views.deployments_table([idle], pods, True, NOW)
    assert wide.headers[-1] == "APPS" and wide.rows == [
        ["idle", "0/0", "0", "0", "<unknown>", "http,echo"]
    ]


@pytest.mark.parametrize(
    ("svc", "ports", "external"),
    [
        (WEB, "8080:30080/TCP", "<none>"),
        (replace(WEB, type=ServiceType.CLUSTER_IP, ports=(ServicePortSpec(53, 53, "UDP"),
                                                          ServicePortSpec(53, 53, "TCP"))),
         "53/UDP,53/TCP", "<none>"),
        (replace(WEB, ports=()), "<none>", "<none>"),
        (replace(WEB, type=ServiceType.LOAD_BALANCER), "8080:30080/TCP", "<pending>"),
        (replace(WEB, type=ServiceType.LOAD_BALANCER, ingress_ip=IPv4Address("198.51.100.7")),
         "8080:30080/TCP", "198.51.100.7"),
    ],
)  # fmt: skip
def test_ports_and_external_ip(svc: Service, ports: str, external: str) -> None:
    assert views.ports_text(svc) == ports
    assert views.external_ip(svc) == external


def test_services_table() -> None:
    headless = replace(WEB, name="a", type=ServiceType.CLUSTER_IP, cluster_ip=None, ports=(),
                       selector={}, created="")  # fmt: skip
    assert views.services_table([WEB, headless], True, NOW) == Table(
        ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"],
        [
            ["a", "ClusterIP", "<none>", "<none>", "<none>", "<unknown>", "<none>"],
            ["web", "NodePort", "10.96.0.10", "<none>", "8080:30080/TCP", "60s", "app=web"],
        ],
    )
    assert views.services_table([WEB], False, NOW).headers[-1] == "AGE"


NAMED = replace(WEB, ports=(ServicePortSpec(8080, "http", "TCP", "web"),
                            ServicePortSpec(9090, 9000, "TCP", "metrics")))  # fmt: skip


HTTP81 = replace(HTTP, ports=(ContainerPort(81, "TCP", "http"),))


def test_endpoints_object_groups_addresses_by_target_port() -> None:
    pods = [
        running("web-b", "10.244.2.2", "node2"),
        running("web-a", "10.244.1.2"),
        running("web-c", "10.244.1.3", containers=(HTTP81,)),
        running("web-d", "10.244.1.4", ready=False),  # not ready: no endpoint
        running("other", "10.244.1.5", labels={"app": "other"}),
    ]
    assert views.endpoints_object(NAMED, pods) == {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "default"},
        "subsets": [
            {"addresses": [{"ip": "10.244.1.2", "nodeName": "node1"},
                           {"ip": "10.244.2.2", "nodeName": "node2"}],
             "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]},
            {"addresses": [{"ip": "10.244.1.3", "nodeName": "node1"}],
             "ports": [{"name": "web", "port": 81, "protocol": "TCP"}]},
            {"addresses": [{"ip": "10.244.1.2", "nodeName": "node1"},
                           {"ip": "10.244.1.3", "nodeName": "node1"},
                           {"ip": "10.244.2.2", "nodeName": "node2"}],
             "ports": [{"name": "metrics", "port": 9000, "protocol": "TCP"}]},
        ],
    }  # fmt: skip
    unnamed = views.endpoints_object(WEB, pods[:1])
    assert unnamed["subsets"] == [
        {"addresses": [{"ip": "10.244.2.2", "nodeName": "node2"}],
         "ports": [{"port": 80, "protocol": "TCP"}]}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("count", "wide", "text"),
    [
        (0, False, "<none>"),
        (1, False, "10.244.1.2:80"),
        (3, False, "10.244.1.2:80,10.244.1.3:80,10.244.1.4:80"),
        (5, False, "10.244.1.2:80,10.244.1.3:80,10.244.1.4:80 + 2 more..."),
        (4, True, "10.244.1.2:80,10.244.1.3:80,10.244.1.4:80,10.244.1.5:80"),
        # shorter texts first, as kubectl: .10 after .9
        (9, True, ",".join(f"10.244.1.{i}:80" for i in range(2, 11))),
    ],
)
def test_endpoints_text(count: int, wide: bool, text: str) -> None:
    pods = [running(f"web-{i}", f"10.244.1.{i}") for i in range(count + 1, 1, -1)]
    assert views.endpoints_text(WEB, pods, wide) == text


def test_endpoints_table() -> None:
    empty = replace(WEB, name="a", selector={"app": "none"}, created="")
    assert views.endpoints_table([WEB, empty], [running("web-1", "10.244.1.2")], False, NOW) == (
        Table(["NAME", "ENDPOINTS", "AGE"],
              [["a", "<none>", "<unknown>"], ["web", "10.244.1.2:80", "60s"]])
    )  # fmt: skip


def test_kv_puts_values_at_column_24() -> None:
    assert views.kv("Name", "web") == "Name:                   web"
    assert views.kv("App", "http", 4) == "    App:                    http"
    assert views.kv("A very long label of 30 chars", 1) == "A very long label of 30 chars:1"


def test_describe_pod() -> None:
    side = Container("side", "none", {}, ())
    pod = replace(running("web-a", "10.244.1.2"), reason="NodeNotReady", ready=False,
                  message="node lost", containers=(HTTP, side))  # fmt: skip
    assert views.describe_pod(pod) == [
        "Name:                   web-a",
        "Namespace:              default",
        "Node:                   node1/192.168.0.11",
        f"Start Time:             {CREATED}",
        "Labels:                 app=web",
        "Status:                 Running",
        "Reason:                 NodeNotReady",
        "Ready:                  False",
        "Message:                node lost",
        "IP:                     10.244.1.2",
        "Controlled By:          Deployment/web",
        "Containers:",
        "  web:",
        "    App:                    http",
        '    Args:                   {"port": 80}',
        "    Ports:                  80/TCP (http)",
        "  side:",
        "    App:                    none",
        "    Args:                   <none>",
        "    Ports:                  <none>",
    ]
    bare = views.describe_pod(Pod("p"))
    assert bare[2:4] == ["Node:                   <none>/<none>",
                         "Start Time:             <unknown>"]  # fmt: skip
    assert "Controlled By:          <none>" in bare and not any(
        line.startswith(("Reason", "Ready", "Message")) for line in bare
    )


def test_describe_service() -> None:
    svc = replace(NAMED, type=ServiceType.LOAD_BALANCER, session_affinity=SessionAffinity.CLIENT_IP,
                  affinity_timeout=60, external_traffic_policy=TrafficPolicy.LOCAL,
                  ports=(ServicePortSpec(8080, "http", "TCP", "web", 30080),
                         ServicePortSpec(9090, 0, "UDP")))  # fmt: skip
    assert views.describe_service(svc, [running("web-1", "10.244.1.2")]) == [
        "Name:                   web",
        "Namespace:              default",
        "Labels:                 <none>",
        "Selector:               app=web",
        "Type:                   LoadBalancer",
        "IP:                     10.96.0.10",
        "LoadBalancer Ingress:   <pending>",
        "Port:                   web  8080/TCP",
        "TargetPort:             http/TCP",
        "NodePort:               web  30080/TCP",
        "Endpoints:              10.244.1.2:80",
        "Port:                   <unset>  9090/UDP",
        "TargetPort:             9090/UDP",
        "Endpoints:              10.244.1.2:9090",
        "Session Affinity:       ClientIP",
        "Affinity Timeout:       60s",
        "External Traffic Policy:Local",  # a 24-character label meets its value
    ]
    plain = views.describe_service(replace(WEB, type=ServiceType.CLUSTER_IP), [])
    assert plain[-2:] == ["Endpoints:              <none>", "Session Affinity:       None"]


def test_describe_deployment() -> None:
    dep = Deployment("web", replicas=3, selector={"app": "web"},
                     template=PodTemplate({"app": "web"}, (HTTP,), "node1"))  # fmt: skip
    pods = [running("web-b", "10.244.1.3"), running("web-a", "10.244.1.2").with_status(
        PodPhase.PENDING), running("x", "10.244.1.9", owner="other")]  # fmt: skip
    assert views.describe_deployment(dep, pods) == [
        "Name:                   web",
        "Namespace:              default",
        "Selector:               app=web",
        "Replicas:               3 desired | 2 total | 1 running",
        "Pod Template Labels:    app=web",
        "Node:                   node1",
        'Container web:          app http {"port": 80}',
        "Pods:",
        "  web-a  Pending  <none>  node1",
        "  web-b  Running  10.244.1.3  node1",
    ]


@pytest.mark.parametrize(
    ("agent", "error", "extra"),
    [
        (None, None, []),
        ({"subnet": "10.244.1.0/24", "pods": 1, "uptime": 12.6, "other": 1}, None,
         ["Subnet:                 10.244.1.0/24", "Pods:                   1",
          "Uptime:                 13s"]),
        ({"leases": 2, "uptime": "long"}, None, ["Leases:                 2"]),
        ("not a dict", None, []),
        (None, "connection refused", ["Agent:                  unreachable (connection refused)"]),
    ],
)  # fmt: skip
def test_describe_node(agent: Any, error: str | None, extra: list[str]) -> None:
    pods = [running("web-1", "10.244.1.2"), running("web-2", "10.244.2.2", "node2"),
            Pod("kube-1", namespace="a", node_name="node1")]  # fmt: skip
    lines = views.describe_node(NODES[0], pods, agent, error)
    assert lines == [
        "Name:                   node1",
        "Status:                 Ready",
        "InternalIP:             127.0.0.11",
        "PodCIDR:                10.244.1.0/24",
        "Control Endpoint:       127.0.0.1:1",
        *extra,
        "Non-terminated Pods:    (2 in total)",
        f"  {'a':<12}{'kube-1':<40}{'Pending':<10}",
        f"  {'default':<12}{'web-1':<40}{'Running':<10}10.244.1.2",
    ]


def test_status_tables() -> None:
    processes = [
        {"name": "etcd", "pid": 10, "running": True, "nodeIP": "", "log": "etcd.log"},
        {"name": "node1", "pid": 11, "running": False, "nodeIP": "127.0.2.11", "log": "n1.log"},
    ]
    assert views.local_status_table(processes) == Table(
        ["NAME", "PID", "STATE", "NODE-IP", "LOG"],
        [["etcd", "10", "running", "-", "etcd.log"],
         ["node1", "11", "gone", "127.0.2.11", "n1.log"]],
    )  # fmt: skip
    containers = [
        {"name": "p_etcd_1", "role": "etcd", "state": "running", "health": "", "nodeIP": "",
         "published": "127.0.0.1:2379"},
        {"name": "p_node1_1", "role": "node", "state": "", "health": "healthy",
         "nodeIP": "172.28.0.11", "published": ""},
    ]  # fmt: skip
    assert views.compose_status_table(containers) == Table(
        ["NAME", "ROLE", "STATE", "HEALTH", "NODE-IP", "PUBLISHED"],
        [["p_etcd_1", "etcd", "running", "-", "-", "127.0.0.1:2379"],
         ["p_node1_1", "node", "-", "healthy", "172.28.0.11", "-"]],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("result", "view"),
    [
        ({"lines": ["-A KUBE-SERVICES", "COMMIT"]}, ["-A KUBE-SERVICES", "COMMIT"]),
        ({"rows": [{"dst": "10.244.0.0/16", "dev": "flannel0"}, {"dst": "default"}]},
         Table(["DST", "DEV"], [["10.244.0.0/16", "flannel0"], ["default", ""]])),
        ([{"mac": "aa", "port": 1}], Table(["MAC", "PORT"], [["aa", "1"]])),
        ({"rows": []}, ["{", '  "rows": []', "}"]),
        ({"rx": 3}, ["{", '  "rx": 3', "}"]),
        ([1, 2], ["[", "  1,", "  2", "]"]),
    ],
)  # fmt: skip
def test_dump_view(result: Any, view: Table | list[str]) -> None:
    assert views.dump_view(result) == view


@pytest.mark.parametrize(
    ("result", "hops"),
    [
        ({"hops": [["node2", "root", "cni0", "rx", "", 1.0]]},
         [["node2", "root", "cni0", "rx", "", 1.0]]),
        ({"hops": [["node2", "root", "cni0", "rx", "", 1.5]], "omitted": 4},
         [["node2", "root", "cni0", "rx", "", 1.5],
          ["node2", "", "", "hops omitted", "4 more hops", 1.5]]),
        ({"hops": [], "omitted": 2}, [["node2", "", "", "hops omitted", "2 more hops", 0.0]]),
        ({"hops": [["node2", "short"]], "omitted": 1},
         [["node2", "short"], ["node2", "", "", "hops omitted", "1 more hops", 0.0]]),
        (None, []),
    ],
)  # fmt: skip
def test_node_hops(result: Any, hops: list[list[Any]]) -> None:
    assert views.node_hops("node2", result) == hops


def test_merge_trace_orders_hops_in_time_stably() -> None:
    origin = {
        "hops": [
            ["node1", "pod", "eth0", "tx", "", 1.0],
            ["node1", "root", "flannel0", "tx", "", 3.0],
        ],
        "result": "reply",
    }
    others = [[["node2", "root", "flannel0", "rx", "", 2.0],
               ["node2", "root", "cni0", "tx", "", 3.0]],
              [["node3", "", "", "hops unavailable", "refused", 0.0]]]  # fmt: skip
    assert views.merge_trace(origin, others) == {
        "hops": [
            ["node3", "", "", "hops unavailable", "refused", 0.0],
            ["node1", "pod", "eth0", "tx", "", 1.0],
            ["node2", "root", "flannel0", "rx", "", 2.0],
            ["node1", "root", "flannel0", "tx", "", 3.0],
            ["node2", "root", "cni0", "tx", "", 3.0],
        ],
        "result": "reply",
    }  # fmt: skip
    assert views.merge_trace({}, []) == {"hops": [], "result": ""}


def test_trace_table_numbers_hops_and_drops_the_time() -> None:
    assert views.trace_table([["node1", "pod", "eth0", "tx", "icmp echo", 1.0]]) == Table(
        ["#", "NODE", "NETNS", "IFACE", "EVENT", "DETAIL"],
        [["1", "node1", "pod", "eth0", "tx", "icmp echo"]],
    )


@pytest.mark.parametrize(
    ("result", "line"),
    [
        ({"packets": 3}, "3 packets captured (120 bytes) to out.pcap"),
        ({"packets": 3, "dropped": 2}, "3 packets captured (120 bytes, 2 dropped) to out.pcap"),
        (None, "? packets captured (120 bytes) to out.pcap"),
    ],
)
def test_capture_summary(result: Any, line: str) -> None:
    assert views.capture_summary(result, 120, "out.pcap") == line
