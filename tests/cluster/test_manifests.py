"""Kubernetes YAML -> registry objects, pure."""

from __future__ import annotations

import textwrap

import pytest

from emunet.cluster.manifests import app_for_image, parse_manifests
from emunet.cluster.registry import (
    Container,
    ContainerPort,
    Deployment,
    Pod,
    PodTemplate,
    Service,
    ServicePortSpec,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)
from emunet.errors import ConfigError

WEB = textwrap.dedent(
    """\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {app: web}
      annotations: {note: x}
    spec:
      replicas: 3
      strategy: {type: RollingUpdate}
      selector:
        matchLabels: {app: web}
      template:
        metadata:
          labels: {app: web}
        spec:
          containers:
          - name: whoami
            image: traefik/whoami:v1.10
            imagePullPolicy: IfNotPresent
            ports:
            - containerPort: 80
              name: http
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web
    spec:
      type: NodePort
      selector: {app: web}
      sessionAffinity: ClientIP
      sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
      externalTrafficPolicy: Local
      ports:
      - port: 80
        targetPort: http
        nodePort: 30080
    """
)


def test_deployment_and_service() -> None:
    m = parse_manifests(WEB)
    dep, svc = m.objects
    assert dep == Deployment(
        name="web",
        replicas=3,
        selector={"app": "web"},
        template=PodTemplate(
            {"app": "web"},
            (Container("whoami", "http", {"port": 80}, (ContainerPort(80, "TCP", "http"),)),),
        ),
        labels={"app": "web"},
    )
    assert svc == Service(
        name="web",
        type=ServiceType.NODE_PORT,
        selector={"app": "web"},
        ports=(ServicePortSpec(80, "http", "TCP", "", 30080),),
        session_affinity=SessionAffinity.CLIENT_IP,
        affinity_timeout=60,
        external_traffic_policy=TrafficPolicy.LOCAL,
    )
    assert m.warnings == [
        "document 1 (Deployment web): spec.strategy: not used by emunet, ignored",
        "document 1 (Deployment web): spec.template.spec.containers[0].imagePullPolicy: "
        "not used by emunet, ignored",
    ]


def test_pod_namespace_and_list() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: Pod
          metadata: {name: client, labels: {role: client}}
          spec:
            nodeName: node2
            containers: [{name: c, image: busybox, ports: [{containerPort: 9}]}]
          status: {phase: Running}
        """
    ).replace("busybox", "sink-app")
    (pod,) = parse_manifests(text, "prod").objects
    assert pod == Pod(
        name="client",
        namespace="prod",
        labels={"role": "client"},
        node_name="node2",
        containers=(Container("c", "sink", {"port": 9}, (ContainerPort(9),)),),
    )


@pytest.mark.parametrize(
    ("image", "app"),
    [
        ("traefik/whoami", "http"),
        ("nginx:1.27", "http"),
        ("docker.io/library/httpd:2", "http"),
        ("hashicorp/http-echo:1.0", "echo"),
        ("ealen/echo-server", "echo"),
        ("registry:5000/team/sink@sha256:abc", "sink"),
        ("localhost:5000/redis:7", None),
        ("busybox", None),
    ],
)
def test_app_for_image(image: str, app: str | None) -> None:
    assert app_for_image(image) == app


def pod_doc(meta_extra: str = "", container: str = "image: busybox") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Pod
        metadata:
          name: p
          {meta_extra}
        spec:
          containers:
          - name: c
            {container}
        """
    )


def test_app_from_annotation_label_and_args() -> None:
    ann = "annotations: {emunet.io/app: echo, emunet.io/args: '{\"port\": 7007}'}"
    (p,) = parse_manifests(pod_doc(ann)).objects
    assert isinstance(p, Pod)
    assert p.containers[0].app == "echo" and p.containers[0].args == {"port": 7007}
    (p,) = parse_manifests(pod_doc("labels: {emunet.io/app: sink}")).objects
    assert isinstance(p, Pod) and p.containers[0].app == "sink"
    per = "annotations: {emunet.io/app: echo, emunet.io/app.c: http}"
    (p,) = parse_manifests(pod_doc(per, "image: nginx")).objects
    assert isinstance(p, Pod) and p.containers[0].app == "http"


BAD: list[tuple[str, str, str]] = [
    (
        "port range",
        WEB.replace("nodePort: 30080", "nodePort: 70000"),
        "document 2 (Service web): spec.ports[0].nodePort: must be 30000-32767, got 70000",
    ),
    (
        "service port",
        WEB.replace("  - port: 80", "  - port: 70000"),
        "document 2 (Service web): spec.ports[0].port: must be 1-65535, got 70000",
    ),
    (
        "container port type",
        WEB.replace("containerPort: 80", "containerPort: eighty"),
        "document 1 (Deployment web): spec.template.spec.containers[0].ports[0].containerPort: "
        "must be an integer, got string",
    ),
    (
        "selector",
        WEB.replace("matchLabels: {app: web}", "matchLabels: {app: api}"),
        "document 1 (Deployment web): spec.template.metadata.labels: `selector` does not match",
    ),
    (
        "replicas",
        WEB.replace("replicas: 3", "replicas: -2"),
        "document 1 (Deployment web): spec.replicas: must be 0 to 1000, got -2",
    ),
    (
        "unknown image",
        pod_doc(),
        "document 1 (Pod p): spec.containers[0].image: cannot tell which emunet app runs "
        "image 'busybox'",
    ),
    (
        "args annotation",
        pod_doc("annotations: {emunet.io/args: '[1]'}", "image: nginx"),
        "document 1 (Pod p): metadata.annotations.emunet.io/args: must be a JSON object",
    ),
    (
        "kind",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        "document 1: kind: 'ConfigMap' is not supported",
    ),
    (
        "apiVersion",
        WEB.replace("apiVersion: apps/v1", "apiVersion: extensions/v1beta1"),
        "document 1 (Deployment): apiVersion: must be 'apps/v1' for a Deployment",
    ),
    ("scalar", "--- 42\n", "document 1: must be a mapping with apiVersion and kind"),
    ("no kind", "apiVersion: v1\n", "document 1: kind: required"),
    (
        "headless",
        WEB.replace("type: NodePort", "clusterIP: None"),
        "document 2 (Service web): spec.clusterIP: headless Services (None) are not supported",
    ),
    (
        "match expressions",
        WEB.replace("matchLabels: {app: web}", "matchExpressions: []\n    matchLabels: {app: web}"),
        "document 1 (Deployment web): spec.selector.matchExpressions: not supported",
    ),
    ("yaml", "kind: [Pod\n", "line 2, column 1:"),
    ("empty", "---\n---\n", "no objects found"),
    (
        "namespace",
        pod_doc("namespace: other", "image: nginx"),
        "document 1 (Pod p): metadata.namespace: 'other' does not match the namespace given",
    ),
    (
        "metadata type",
        "apiVersion: v1\nkind: Pod\nmetadata: [1]\n",
        "document 1 (Pod): metadata: must be an object, got list",
    ),
    (
        "missing name",
        "apiVersion: v1\nkind: Service\nmetadata: {}\nspec: {ports: [{port: 1}]}\n",
        "document 1 (Service): metadata.name: required",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_invalid_manifests(case: str, text: str, message: str) -> None:
    namespace = "default" if case == "namespace" else None
    with pytest.raises(ConfigError) as info:
        parse_manifests(text, namespace)
    assert str(info.value).startswith(message), str(info.value)


def test_huge_manifests_and_labels_are_refused_fast_in_one_short_line() -> None:
    """Issue 11: a 10 MB file of 33,000 documents took 36 s to refuse, and a 1 MB
    label was echoed whole in its error."""
    from emunet.cluster.registry import Container, Pod

    # refused by counting, before the YAML parser sees the text
    with pytest.raises(ConfigError, match="33001 documents: at most 1000"):
        parse_manifests("---\nkind: Pod\n" * 33000)
    with pytest.raises(ConfigError, match="a manifest may hold at most 4 MiB"):
        parse_manifests("#" * (5 << 20))
    with pytest.raises(ConfigError) as info:
        Pod("a", labels={"x": "y" * 1_000_000}, containers=(Container("m", "http"),)).validate()
    assert len(str(info.value)) < 200 and "(1000000 characters, at most 63)" in str(info.value)
