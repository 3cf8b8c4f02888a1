"""`python -m mirrord_testing.nemesis --rounds N --seed S [--data DIR]`: exit 0 only if no invariant broke."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mirrord_testing.localcluster import LocalCluster, iptables_available
from mirrord_testing.nemesis.runner import Nemesis, default_layouts
from mirrord_testing.nemesis.lazyfs import unavailable_reason as lazyfs_unavailable
from mirrord_testing.nemesis.schedule import FAULTS, NEEDS_IPTABLES, NEEDS_LAZYFS, make_schedule

NODES = ("a", "b", "c")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mirrord_testing.nemesis", description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="replays a run (default: a random seed, printed)")
    parser.add_argument("--data", type=Path, default=None,
                        help="directory for the nodes' data and logs (default: a temporary one, removed if all is well)")
    parser.add_argument("--first-ip", type=int, default=int(os.environ.get("MIRRORD_TEST_FIRST_IP") or "41"),
                        help="nodes on 127.0.0.FIRST_IP.. (default $MIRRORD_TEST_FIRST_IP or 41)")
    parser.add_argument("--databases", type=int, default=2)
    parser.add_argument("--writers", type=int, default=2, help="concurrent writers per database")
    parser.add_argument("--max-faults", type=int, default=3, help="faults per round, at most")
    parser.add_argument("--partner-timeout", type=int, default=2)
    parser.add_argument("--convergence-bound", type=float, default=45.0)
    parser.add_argument("--no-power-cuts", action="store_true",
                        help="leave the power-cut fault out (and replay a seed as it ran before power cuts existed)")
    parser.add_argument("--no-forced-service", action="store_true",
                        help="leave forced service out (and replay a seed as it ran before it was in the schedule)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    faults = FAULTS if iptables_available() else tuple(f for f in FAULTS if f not in NEEDS_IPTABLES)
    no_lazyfs = "left out (--no-power-cuts)" if args.no_power_cuts else lazyfs_unavailable()
    if no_lazyfs:
        faults = tuple(f for f in faults if f not in NEEDS_LAZYFS)
    if args.no_forced_service:
        faults = tuple(f for f in faults if f != "force")
    replay = (f"python -m mirrord_testing.nemesis --rounds {args.rounds} --seed {seed}" + (" --no-power-cuts" if args.no_power_cuts else "")
              + (" --no-forced-service" if args.no_forced_service else ""))
    print(f"nemesis seed {seed} (replay: {replay})", flush=True)
    if "cut" not in faults:
        print("no iptables (needs root and the iptables command): link cuts and isolation are left out", flush=True)
    if no_lazyfs:
        print(f"power cuts are left out: {no_lazyfs}", flush=True)
    data = args.data or Path(tempfile.mkdtemp(prefix="mirrord-nemesis-"))
    if args.data is not None and data.exists() and any(data.iterdir()):
        print(f"{data} is not empty; give an empty or new directory", file=sys.stderr)
        return 2
    layouts = default_layouts(NODES, args.databases)
    schedule = make_schedule(seed, args.rounds, NODES, tuple(l.db for l in layouts), args.max_faults, faults)
    cluster = LocalCluster(data, names=NODES, first_ip=args.first_ip, lazyfs=not no_lazyfs)
    nemesis = Nemesis(cluster, layouts, writers_per_db=args.writers, partner_timeout=args.partner_timeout,
                      convergence_bound=args.convergence_bound,
                      out=lambda line: print(line, flush=True))
    started = time.monotonic()
    try:
        nemesis.setup()
        print(f"cluster on {', '.join(f'{n.name}={n.address}' for n in cluster)}; data and logs in {data}; "
              + "; ".join(f"{l.db}: principal {l.principal}, mirror {l.mirror}, witness {l.witness}" for l in layouts),
              flush=True)
        asyncio.run(nemesis.run(schedule))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        nemesis.aborted = nemesis.aborted or "interrupted"
    finally:
        cluster.stop_all()
    violations = nemesis.violations()
    print(f"\n--- summary ({time.monotonic() - started:.0f}s)\n{nemesis.summary()}")
    print(f"seed {seed} (replay: {replay})")
    if violations or nemesis.aborted:
        print(f"FAILED; node logs kept in {data}")
        return 1
    if args.data is None:
        shutil.rmtree(data, ignore_errors=True)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
