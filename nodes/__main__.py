"""``python -m emunet.nodes`` / ``emunet-node``: run one node agent.

Example (local mode starts three of these on 127.0.0.11-13)::

    emunet-node --name node1 --node-ip 127.0.0.11 --etcd 127.0.0.1:2379 \\
        --state-dir /tmp/emunet/node1

Exit status: 0 after SIGTERM/SIGINT, 1 when the agent had to stop (its
subnet lease was revoked, a port is in use...), 2 for bad arguments. Errors
are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from ipaddress import IPv4Network

from emunet.nodes.agent import Agent, AgentConfig
from emunet.nodes.process import (
    add_token_option,
    address_map_arg,
    network_arg,
    port_arg,
    program_parser,
    run_main,
    setup_logging,
    token_from_args,
    until_signal,
    usage_error,
)
from emunet.nodes.resolve import resolve_address

from emunet.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    p = program_parser(
        "emunet-node",
        "emunet node agent: flanneld (udp backend), kubelet and kube-proxy "
        "of one emulated Kubernetes node.",
        "subnet.env, IPAM state",
    )
    p.add_argument("--name", required=True, help="node name (registry and traces)")
    p.add_argument(
        "--node-ip",
        required=True,
        help="node IP (overlay, control): an address, or auto (what the host name resolves to)",
    )
    p.add_argument("--control-port", type=port_arg, default=10250, help="control API port (10250)")
    p.add_argument(
        "--lease-ttl", type=int, default=86400, metavar="SECONDS", help="subnet lease TTL"
    )
    p.add_argument("--network", type=network_arg, default=IPv4Network("10.244.0.0/16"))
    p.add_argument(
        "--node-network",
        type=network_arg,
        default=IPv4Network("127.0.0.0/8"),
        help="the node network eth0 is on (127.0.0.0/8 in local mode)",
    )
    p.add_argument(
        "--address-map",
        type=address_map_arg,
        default=None,
        metavar="EMULATED=REAL",
        help="where node-network addresses really are, e.g. 172.18.0.0/16=127.0.0.0/16 "
        "(local mode: pods reach node IPs that are not their own loopback)",
    )
    p.add_argument(
        "--gateway",
        default=None,
        metavar="IP|NAME",
        help="the node network's router (the internet's gateway): eth0's default route",
    )
    p.add_argument(
        "--proxy-mode",
        choices=["iptables", "ipvs"],
        default="iptables",
        help="kube-proxy mode of this node (iptables)",
    )
    p.add_argument(
        "--ipvs-scheduler",
        choices=["rr", "lc", "sh", "dh"],
        default="rr",
        help="IPVS scheduler with --proxy-mode ipvs (rr)",
    )
    p.add_argument(
        "--overlay-accept",
        choices=["any", "leases"],
        default="any",
        help="overlay datagrams from any sender, as flanneld takes them (any), or only from "
        "PublicIPs holding a lease (leases); the others are counted either way",
    )
    p.add_argument(
        "--allow-module-apps",
        action="store_true",
        help="let pods name any module:Class as their app (imported into this agent); "
        "otherwise only the built-in apps and installed emunet.apps entry points",
    )
    p.add_argument("--node-lease-ttl", type=int, default=10, metavar="SECONDS")
    p.add_argument("--seed", type=int, default=None, help="seed the data plane's randomness")
    add_token_option(p)
    return p


async def amain(config: AgentConfig) -> int:
    log = logging.getLogger("emunet.agent")
    async with Agent(config) as agent:
        waiter = asyncio.create_task(agent.wait())
        stopper = asyncio.create_task(until_signal())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("signal received, shutting down")
            waiter.cancel()
            return 0
        stopper.cancel()
        waiter.result()  # raises AgentStopped
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.name, args.log_level)
    if args.lease_ttl < 2 or args.node_lease_ttl < 2:
        return usage_error("emunet-node", "--lease-ttl and --node-lease-ttl must be at least 2 s")
    try:
        node_ip = resolve_address(args.node_ip)
        gateway = resolve_address(args.gateway) if args.gateway else None
        token = token_from_args(args.token_file)
    except ConfigError as exc:
        return usage_error(f"emunet-node {args.name}", str(exc))
    config = AgentConfig(
        name=args.name,
        node_ip=node_ip,
        etcd=args.etcd,
        state_dir=args.state_dir,
        control_port=args.control_port,
        lease_ttl=args.lease_ttl,
        network=args.network,
        node_network=args.address_map.emulated if args.address_map else args.node_network,
        gateway=gateway,
        address_map=args.address_map,
        proxy_mode=args.proxy_mode,
        ipvs_scheduler=args.ipvs_scheduler,
        node_lease_ttl=args.node_lease_ttl,
        overlay_accept=args.overlay_accept,
        allow_module_apps=args.allow_module_apps,
        token=token,
        seed=args.seed,
    )
    return run_main(f"emunet-node {args.name}", amain(config))


if __name__ == "__main__":
    sys.exit(main())
