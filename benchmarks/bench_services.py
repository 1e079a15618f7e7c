"""Per-packet cost of the Service data path vs the number of Services.

For N Services of 3 endpoints: the cost of the first packet of a new
connection (conntrack allocation, KUBE-SERVICES lookup, endpoint choice,
DNAT, confirm) and of a packet of an established connection (conntrack lookup,
state update, DNAT re-applied), each through prerouting -> forward ->
postrouting, the tables measured in turns, block by block; and the time of
one kube-proxy sync (``set_services``). The measurement is
:mod:`emunet.control.bench_services`' (``emunet bench`` uses it).

    python benchmarks/bench_services.py [--sizes 10,1000,10000] [--packets N] [--sync N]
"""

from __future__ import annotations

import argparse

from emunet.control.bench_services import measure, measure_all, sync_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--sync", type=int, default=10000)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    print(f"{'services':>9} {'new conn ns/packet':>20} {'established ns/packet':>22}")
    measure(sizes[0], min(args.packets, 2000))  # warm-up
    # the tables take turns block by block: a slow spell of the machine meets all
    for n, (new_ns, est_ns) in zip(sizes, measure_all(sizes, args.packets), strict=True):
        results[n] = (new_ns, est_ns)
        print(f"{n:>9} {new_ns:>20.0f} {est_ns:>22.0f}")
    lo, hi = results[sizes[0]], results[sizes[-1]]
    print(
        f"ratio {sizes[-1]} vs {sizes[0]} services: new {hi[0] / lo[0]:.2f}x, "
        f"established {hi[1] / lo[1]:.2f}x (aim: within 1.2x)"
    )
    assert all(v[1] > 0 for v in results.values())
    ms = sync_time(args.sync) * 1000
    print(f"sync of {args.sync} services x 3 endpoints: {ms:.0f} ms (aim < 1000 ms)")


if __name__ == "__main__":
    main()
