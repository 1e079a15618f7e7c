"""flannel's schema and subnet rules, pure (no etcd)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from emunet.cluster.flannel import (
    Allocation,
    AllocationKind,
    LeaseAdded,
    LeaseRemoved,
    LeaseRevoked,
    LeaseTable,
    MalformedLease,
    NetworkConfig,
    OutOfSubnets,
    SubnetEnv,
    choose_subnet,
    config_key,
    decode_lease_value,
    encode_lease_value,
    parse_subnet_env,
    parse_subnet_key,
    renew_delay,
    renew_retry_delay,
    subnet_key,
)
from emunet.errors import ConfigError

N = IPv4Network
A = IPv4Address

# -- config defaults -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "subnet_len", "subnet_min", "subnet_max"),
    [
        ('{"Network":"10.244.0.0/16"}', 24, "10.244.1.0", "10.244.255.0"),
        ('{"Network":"10.0.0.0/8"}', 24, "10.0.1.0", "10.255.255.0"),
        ('{"Network":"10.1.0.0/22"}', 24, "10.1.1.0", "10.1.3.0"),
        ('{"Network":"10.1.0.0/23"}', 25, "10.1.0.128", "10.1.1.128"),
        ('{"Network":"10.1.0.0/28"}', 30, "10.1.0.4", "10.1.0.12"),
        ('{"Network":"10.244.0.0/16","SubnetLen":26}', 26, "10.244.0.64", "10.244.255.192"),
        ('{"network":"10.244.0.0/16","subnetlen":20}', 20, "10.244.16.0", "10.244.240.0"),
        (
            '{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0"}',
            24,
            "10.244.10.0",
            "10.244.20.0",
        ),
    ],
)
def test_config_defaults(text: str, subnet_len: int, subnet_min: str, subnet_max: str) -> None:
    config = NetworkConfig.from_json(text)
    assert (config.subnet_len, config.subnet_min, config.subnet_max) == (
        subnet_len,
        A(subnet_min),
        A(subnet_max),
    )


@pytest.mark.parametrize(
    ("backend", "kind", "port"),
    [
        ("", "udp", 8285),
        (',"Backend":{"Type":"udp"}', "udp", 8285),
        (',"Backend":{"Type":"udp","Port":8999}', "udp", 8999),
    ],
)
def test_config_backend_defaults(backend: str, kind: str, port: int) -> None:
    config = NetworkConfig.from_json('{"Network":"10.244.0.0/16"' + backend + "}")
    assert (config.backend_type, config.port) == (kind, port)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "network config"),
        ("[]", "network config"),
        ("{}", "Network"),
        ('{"Network":""}', "Network"),
        ('{"Network":"10.244.0.0"}', None),  # a bare address is a /32: too small
        ('{"Network":"10.244.0.0/33"}', "Network"),
        ('{"Network":"10.244.0.1/16"}', "Network"),  # host bits set
        ('{"Network":"fd00::/64"}', "Network"),
        ('{"Network":"10.1.0.0/29"}', "Network"),  # smaller than /28
        ('{"Network":"10.244.0.0/16","SubnetLen":31}', "SubnetLen"),
        ('{"Network":"10.244.0.0/16","SubnetLen":17}', "SubnetLen"),  # < 4 subnets
        ('{"Network":"10.244.0.0/16","SubnetLen":"24"}', "SubnetLen"),
        ('{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5"}', "SubnetMin"),
        ('{"Network":"10.244.0.0/16","SubnetMax":"10.245.0.0"}', "SubnetMax"),
        ('{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.128"}', "SubnetMax"),
        ('{"Network":"10.244.0.0/16","SubnetMin":"x"}', "SubnetMin"),
        (
            '{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.2.0"}',
            "SubnetMin",
        ),
        ('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}', "Backend.Type"),
        ('{"Network":"10.244.0.0/16","Backend":{}}', "Backend.Type"),
        ('{"Network":"10.244.0.0/16","Backend":"udp"}', "Backend"),
        ('{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":70000}}', "Backend.Port"),
        ('{"Network":"10.244.0.0/16","EnableIPv6":true}', "EnableIPv6"),
        ('{"Network":"10.244.0.0/16","EnableIPv4":false}', "EnableIPv4"),
    ],
)
def test_config_rejected_naming_the_field(text: str, field: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        NetworkConfig.from_json(text)
    if field is not None:
        assert str(info.value).startswith(field), str(info.value)


def test_config_messages_follow_flannel() -> None:
    with pytest.raises(ConfigError, match="Minimum useful network prefix is /28"):
        NetworkConfig.from_json('{"Network":"10.1.0.0/29"}')
    with pytest.raises(
        ConfigError, match=re.escape("SubnetMin is not on a SubnetLen boundary: 10.244.1.5")
    ):
        NetworkConfig.from_json('{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5"}')


@pytest.mark.parametrize(
    "text",
    [
        '{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}',
        '{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.1.0.0","SubnetMax":"10.2.0.0",'
        '"Backend":{"Type":"udp","Port":9000}}',
    ],
)
def test_config_to_json_is_canonical(text: str) -> None:
    config = NetworkConfig.from_json(text)
    assert config.to_json() == text
    assert NetworkConfig.from_json(config.to_json()) == config


def test_config_to_json_of_defaults_matches_the_reference_example() -> None:
    config = NetworkConfig.create("10.244.0.0/16")
    assert config.to_json() == (
        '{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}'
    )


# -- keys and values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "subnet", "key"),
    [
        ("/coreos.com/network", "10.244.1.0/24", "/coreos.com/network/subnets/10.244.1.0-24"),
        ("/coreos.com/network/", "10.244.1.0/24", "/coreos.com/network/subnets/10.244.1.0-24"),
        ("/emunet", "10.1.0.4/30", "/emunet/subnets/10.1.0.4-30"),
    ],
)
def test_subnet_key_round_trip(prefix: str, subnet: str, key: str) -> None:
    assert subnet_key(N(subnet), prefix) == key
    assert parse_subnet_key(key, prefix) == N(subnet)
    assert parse_subnet_key(key.encode(), prefix) == N(subnet)


def test_config_key() -> None:
    assert config_key() == "/coreos.com/network/config"
    assert config_key("/x/") == "/x/config"


@pytest.mark.parametrize(
    "key",
    [
        "/coreos.com/network/config",
        "/other/subnets/10.244.1.0-24",
        "/coreos.com/network/subnets/10.244.1.0",
        "/coreos.com/network/subnets/10.244.1.0-",
        "/coreos.com/network/subnets/10.244.1.0-x",
        "/coreos.com/network/subnets/10.244.1.0-33",
        "/coreos.com/network/subnets/10.244.1.1-24",
        "/coreos.com/network/subnets/10.244.1-24",
        "/coreos.com/network/subnets/10.244.1.0-24&fd00::-64",
        b"/coreos.com/network/subnets/\xff-24",
    ],
)
def test_bad_subnet_keys(key: str | bytes) -> None:
    with pytest.raises(MalformedLease):
        parse_subnet_key(key)


def test_lease_value_is_byte_exact() -> None:
    value = encode_lease_value(A("172.18.0.3"))
    assert value == b'{"PublicIP":"172.18.0.3","PublicIPv6":null}'
    assert decode_lease_value(value) == A("172.18.0.3")


@pytest.mark.parametrize(
    ("value", "ip"),
    [
        (b'{"PublicIP":"10.0.0.7","PublicIPv6":null}', "10.0.0.7"),
        (  # what flannel's vxlan backend writes
            b'{"PublicIP":"10.0.0.8","PublicIPv6":null,"BackendType":"vxlan",'
            b'"BackendData":{"VNI":1,"VtepMAC":"9e:8c:0d:3e:43:8b"}}',
            "10.0.0.8",
        ),
        (b'{"publicip":"10.0.0.9"}', "10.0.0.9"),
    ],
)
def test_lease_values_decoded(value: bytes, ip: str) -> None:
    assert decode_lease_value(value) == A(ip)


@pytest.mark.parametrize(
    "value", [b"", b"{", b"[]", b"{}", b'{"PublicIP":7}', b'{"PublicIP":"fd00::1"}', b"\xff"]
)
def test_bad_lease_values(value: bytes) -> None:
    with pytest.raises(MalformedLease):
        decode_lease_value(value)


def test_go_json_has_no_spaces() -> None:
    # sanity check of the claim: Go's json.Marshal equals Python's compact dump
    compact = json.dumps({"PublicIP": "172.18.0.3", "PublicIPv6": None}, separators=(",", ":"))
    assert compact.encode() == encode_lease_value(A("172.18.0.3"))


# -- allocation --------------------------------------------------------------------

CFG16 = NetworkConfig.create("10.244.0.0/16")
CFG28 = NetworkConfig.create("10.1.0.0/28")  # /30 subnets: .4, .8, .12
ME = A("172.18.0.3")
OTHER = A("172.18.0.9")


@pytest.mark.parametrize(
    ("config", "leases", "previous", "expected"),
    [
        # our public IP already holds a lease: reuse it
        (
            CFG16,
            {N("10.244.7.0/24"): ME, N("10.244.8.0/24"): OTHER},
            N("10.244.9.0/24"),
            Allocation(N("10.244.7.0/24"), AllocationKind.REUSED),
        ),
        # the previous subnet (from subnet.env) is free: take it again
        (
            CFG16,
            {N("10.244.8.0/24"): OTHER},
            N("10.244.9.0/24"),
            Allocation(N("10.244.9.0/24"), AllocationKind.PREVIOUS),
        ),
        # our old lease no longer fits the config (other SubnetLen): delete it, allocate
        (
            CFG28,
            {N("10.1.0.0/29"): ME, N("10.1.0.12/30"): OTHER},
            None,
            # (the stale /29 still counts as taken while choosing, as in flannel)
            Allocation(N("10.1.0.8/30"), AllocationKind.ALLOCATED, (N("10.1.0.0/29"),)),
        ),
        # the previous subnet is taken: random among the free ones (only one here)
        (
            CFG28,
            {N("10.1.0.4/30"): OTHER, N("10.1.0.12/30"): OTHER},
            N("10.1.0.4/30"),
            Allocation(N("10.1.0.8/30"), AllocationKind.ALLOCATED),
        ),
        # the previous subnet is outside SubnetMin..SubnetMax (the first subnet)
        (
            CFG28,
            {N("10.1.0.4/30"): OTHER, N("10.1.0.8/30"): OTHER},
            N("10.1.0.0/30"),
            Allocation(N("10.1.0.12/30"), AllocationKind.ALLOCATED),
        ),
    ],
)
def test_choose_subnet(
    config: NetworkConfig,
    leases: dict[IPv4Network, IPv4Address],
    previous: IPv4Network | None,
    expected: Allocation,
) -> None:
    assert choose_subnet(config, leases, ME, previous, random.Random(1)) == expected


def test_out_of_subnets() -> None:
    leases = {N("10.1.0.4/30"): OTHER, N("10.1.0.8/30"): OTHER, N("10.1.0.12/30"): A("10.9.9.9")}
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        choose_subnet(CFG28, leases, ME, None, random.Random(1))


def test_overlapping_foreign_lease_blocks_candidates() -> None:
    # a /29 at .8 covers both .8/30 and .12/30
    leases = {N("10.1.0.8/29"): OTHER}
    got = choose_subnet(CFG28, leases, ME, N("10.1.0.12/30"), random.Random(1))
    assert got == Allocation(N("10.1.0.4/30"), AllocationKind.ALLOCATED)


def test_random_choice_among_the_first_100_free() -> None:
    rng = random.Random(7)
    picks = {choose_subnet(CFG16, {}, ME, None, rng).subnet for _ in range(2000)}
    first_100 = set(list(CFG16.subnets())[:100])
    assert picks <= first_100
    assert len(picks) > 90  # uniform over the 100 candidates
    assert N("10.244.0.0/24") not in picks  # the first subnet is skipped


# -- renewal --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "delay"),
    [(86400, 86400 - 3600), (7200, 3600), (7199, 3599.5), (3, 1.5), (2, 1.0)],
)
def test_renew_delay(ttl: int, delay: float) -> None:
    assert renew_delay(ttl) == delay


def test_renew_retry_delay() -> None:
    assert renew_retry_delay(86400) == 60
    assert renew_retry_delay(3) == 0.5
    with pytest.raises(ValueError):
        renew_delay(0)


# -- subnet.env ------------------------------------------------------------------

SUBNET_ENV = """FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1472
FLANNEL_IPMASQ=true
"""


def test_subnet_env_render_is_exact() -> None:
    env = SubnetEnv.for_lease(CFG16, N("10.244.1.0/24"))
    assert env.subnet == IPv4Interface("10.244.1.1/24")
    assert env.render() == SUBNET_ENV
    assert parse_subnet_env(SUBNET_ENV) == env
    assert env.lease_subnet == N("10.244.1.0/24")


def test_subnet_env_ipmasq_false_and_extra_lines() -> None:
    text = "FLANNEL_NETWORK=10.1.0.0/28\nFLANNEL_SUBNET=10.1.0.5/30\nFLANNEL_IPV6_NETWORK=x\n"
    env = parse_subnet_env(text + "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    assert (env.mtu, env.ipmasq, env.lease_subnet) == (1450, False, N("10.1.0.4/30"))
    assert "FLANNEL_IPMASQ=false\n" in env.render()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "FLANNEL_NETWORK"),
        ("FLANNEL_NETWORK=10.244.0.0/16\n", "FLANNEL_SUBNET"),
        ("garbage\n", "line 1"),
        ("FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.244.1.1/24\n", "FLANNEL_NETWORK"),
        ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=y\n", "FLANNEL_SUBNET"),
        (SUBNET_ENV.replace("1472", "big"), "FLANNEL_MTU"),
        (SUBNET_ENV.replace("=true", "=yes"), "FLANNEL_IPMASQ"),
    ],
)
def test_bad_subnet_env(text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_subnet_env(text)


# -- lease table (watch events) ----------------------------------------------------

OWN = N("10.244.1.0/24")
P2, P3 = N("10.244.2.0/24"), N("10.244.3.0/24")
IP2, IP3 = A("172.18.0.4"), A("172.18.0.5")


def test_table_snapshot_then_events_skip_own_lease() -> None:
    table = LeaseTable(OWN, ME)
    assert table.reset({OWN: ME, P2: IP2}) == [LeaseAdded(P2, IP2)]
    assert table.put(P3, IP3) == [LeaseAdded(P3, IP3)]
    assert table.put(P3, IP3) == []  # a peer's renewal changes nothing
    assert table.put(OWN, ME) == []  # our own renewal
    assert table.put(P3, IP2) == [LeaseAdded(P3, IP2)]  # new PublicIP: re-add
    assert table.delete(P2) == [LeaseRemoved(P2, IP2)]
    assert table.delete(P2) == []
    assert table.peers == {P3: IP2}


def test_table_relist_emits_the_diff() -> None:
    table = LeaseTable(OWN, ME)
    table.reset({OWN: ME, P2: IP2})
    assert table.reset({OWN: ME, P3: IP3}) == [LeaseRemoved(P2, IP2), LeaseAdded(P3, IP3)]


@pytest.mark.parametrize(
    "step",
    [
        lambda t: t.delete(OWN),
        lambda t: t.put(OWN, IP3),
        lambda t: t.reset({P2: IP2}),
        lambda t: t.reset({OWN: IP3}),
    ],
)
def test_table_own_lease_lost(step: Callable[[LeaseTable], object]) -> None:
    table = LeaseTable(OWN, ME)
    table.reset({OWN: ME})
    with pytest.raises(LeaseRevoked, match=re.escape("Lease has been revoked: 10.244.1.0/24")):
        step(table)


def test_table_without_own_lease_reports_everything() -> None:
    table = LeaseTable()
    assert table.reset({OWN: ME}) == [LeaseAdded(OWN, ME)]
    assert table.delete(OWN) == [LeaseRemoved(OWN, ME)]
