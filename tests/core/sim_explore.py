"""Long random runs and a bounded exhaustive explorer over the quorum simulation (tests/core/quorum_sim.py).

    python -m tests.core.sim_explore random --steps 1000000 --seed 1 [--max-delay 0.3 --drop 0.05
        --duplicate 0.05 --drift 0.1]
    python -m tests.core.sim_explore random --steps 1000000 --seeds 1-12   # one run per seed (the nightly job)
    python -m tests.core.sim_explore explore --depth 5

The simulation drives each partner's real `mirrord.core.session.Session` (what the engine observes and
persists, changed only through its own methods) and the real decisions of `mirrord.core.quorum` (lease math, votes, the ack rule, the
witness's record), `mirrord.core.roles` (what a partner does on the witness's record, on its
partner's claim and on the answer to its vote, and what a manual failover or forced service comes to)
and `mirrord.core.leases` (which answer renews which lease, what a reset ends). Every event is checked as it happens (quorum_sim.Violation: two principals in a
role sequence, two nodes acknowledging in one, an acknowledgement without quorum, a promotion losing
acknowledged commits, two partners that may serve at one instant).

`random`: on a faulty network (messages late by up to 0.3 timeout, 5 % lost, 5 % delivered twice; see
quorum_sim.Network) with clocks drifting up to 10 % (under the design's bound of 11.1 %), events drawn
uniformly from EVENTS; every SETTLE_EVERY events all faults end (links heal,
nodes thaw and restart, SAFETY FULL) and the session must converge — one principal, its mirror of
the same role sequence holding its whole log, and no acknowledged commit missing but those a forced
service reported (liveness, and I1).

`explore` (on the instant network, so that a state is the processes' state alone): every sequence of
EVENTS up to a depth, breadth first from each starting state, states
deduplicated by `state_key`. The key abstracts what a node cannot observe: absolute time (leases and
"last heard" are kept as what remains of them, in steps), commit ids (a log is kept as its length,
what it holds past the part both partners share, and whether it holds every acknowledged commit). Two runs
with one key behave alike in everything the checks look at, so a violation reachable within the
depth is found; a state the abstraction merges is explored once.
"""

from __future__ import annotations

import argparse
import copy
import random
import re
import sys
import time
from collections import deque

from mirrord.core.types import Safety
from tests.core.quorum_sim import FAULTY, NODES, PARTNERS, SHIP, STEP, Network, Sim, Violation

PAIRS = [("A", "B"), ("A", "W"), ("B", "W")]
EVENTS: list[tuple] = (
    [("cut_link", *p) for p in PAIRS] + [("heal", *p) for p in PAIRS]
    + [(kind, n) for kind in ("freeze", "thaw", "kill", "restart", "isolate") for n in NODES]
    + [("manual_failover",), ("force_service",), ("safety", Safety.FULL), ("safety", Safety.OFF)]
    + [("reset", *p) for p in PAIRS]
    + [("advance", STEP), ("advance", 1.0), ("advance", 2.0)]  # in timeouts
)
SETTLE_EVERY = 200


def settle(sim: Sim) -> None:
    """End every fault, wait, and check the session converged without losing an acknowledged commit."""
    for p in PAIRS:
        sim.apply(("heal", *p))
    for n in NODES:
        sim.apply(("thaw", n))
        sim.apply(("restart", n))
    sim.apply(("safety", Safety.FULL))
    # a mirror behind hardens SHIP records a ping while its principal commits one a tick: the bound grows
    # with what it lacks (a few timeouts to settle the roles, then the backlog at its net rate)
    backlog = abs(len(sim.p["A"].log) - len(sim.p["B"].log))
    bound = 4 + backlog / ((SHIP - 1) / STEP)
    if sim.current_principal() is None:
        # no partner serves yet: one learns from the witness's record that it is principal (a ping's answer
        # on the faulty network) before any catching up starts (seed 8 needed 5 timeouts with no backlog)
        bound += 1
    waited = 0.0
    while not _converged(sim):
        if waited >= bound:
            principal = sim.current_principal()
            raise Violation(f"not converged {waited:.0f} timeouts after every fault ended (backlog {backlog}): "
                            f"{_brief(sim)}" if principal else "no principal after every fault ended")
        sim.advance(sim.timeout)
        waited += 1
    principal = sim.current_principal()
    missing = {c.cid for c in sim.commits if c.acked} - set(principal.log)
    if missing - {c.cid for c in sim.forced_loss()} or any(c.cid > sim.fork_mark for c in sim.forced_loss()):
        raise Violation(f"acknowledged commits missing without a forced service to report them: {sorted(missing)[:10]}")


def _converged(sim: Sim) -> bool:
    """SYNCHRONIZED: one principal, its mirror of the same sequence caught up (holding every commit the
    principal acknowledged; on a faulty network the last records may still be in flight), and the witness's
    record saying so."""
    principal = sim.current_principal()
    if principal is None:
        return False
    mirror = sim.p["B" if principal.name == "A" else "A"]
    acked = {c.cid for c in sim.commits if c.acked and c.node == principal.name and c.seq == principal.seq}
    return (mirror.role == "MIRROR" and mirror.seq == principal.seq
            and principal.log[:len(mirror.log)] == mirror.log and acked <= set(mirror.log)
            and (sim.network.instant and mirror.log == principal.log
                 or not sim.network.instant and sim.record.role_sequence == principal.seq and sim.record.mirror_synchronized))


def _compact(sim: Sim) -> None:
    """Forget the history of a converged session (both logs equal, every acknowledged commit in them), so that
    a long run does not slow down as its logs grow: the roles, role sequences, leases and the witness's
    record stay; commit ids start again."""
    for p in sim.p.values():
        p.log, p.waiting = [], []
        s = p.session  # the positions restart with the ids: the mirror holds the (empty) log, all of it acknowledged
        s.hardened_lsn = s.acknowledged_lsn = s.end_of_log_lsn = s.tail_sent_lsn = 0
    sim.commits, sim.fork_mark = [], 0
    sim.inflight.clear()  # they carry the old ids: lost, as a network may lose them


def _brief(sim: Sim) -> str:
    """The simulation's state in one line (logs by length)."""
    parts = [f"{p.name} {p.role} seq {p.seq} log {len(p.log)}" for p in sim.p.values()]
    return f"{'; '.join(parts)}; witness {sim.record}; t={sim.now:.2f}"


def random_run(steps: int, seed: int, report=print, network: Network = FAULTY, drift: float = 0.1) -> dict:
    """`steps` random events on one simulation (settling every SETTLE_EVERY); counts of what happened."""
    rng = random.Random(seed)
    sim, done, settles, started = Sim(network=network, drift=drift, seed=seed), 0, 0, time.monotonic()
    totals = {"commits": 0, "acknowledged": 0}
    events: list[tuple] = []
    try:
        while done < steps:
            event = rng.choice(EVENTS)
            events.append(event)
            sim.apply(event)
            done += 1
            if done % SETTLE_EVERY == 0:
                settle(sim)
                settles += 1
                totals["commits"] += len(sim.commits)
                totals["acknowledged"] += sum(c.acked for c in sim.commits)
                _compact(sim)
                events.clear()
                if done % 100_000 == 0:
                    report(f"  {done} steps, {time.monotonic() - started:.0f} s, role sequence {max(sim.principals)}")
    except Violation as exc:
        raise Violation(f"seed {seed}, step {done}: {str(exc)[:2000]}; events since the last settle: {events[-60:]}") from None
    return {"steps": done, "settles": settles, "role_sequences": max(sim.principals), "forced": len(sim.forced_seqs),
            "commits": totals["commits"] + len(sim.commits), "messages": sim.sent,
            "acknowledged": totals["acknowledged"] + sum(c.acked for c in sim.commits),
            "seconds": round(time.monotonic() - started, 1)}


def state_key(sim: Sim) -> tuple:
    """What the checks can tell apart (see the module's docstring): no absolute time, no commit ids."""
    def left(until: float) -> int:
        return round(max(0.0, min(8.0, (until - sim.now) / (STEP * sim.timeout))))  # clamped first: until may be -inf

    def ago(at: float) -> int:  # (explored with clocks that do not drift: every clock reads sim.now)
        return 8 if at == float("-inf") else max(0, min(8, round((sim.now - at) / (STEP * sim.timeout))))

    acked = {c.cid for c in sim.commits if c.acked}
    a, b = sim.p["A"].log, sim.p["B"].log
    shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    partners = tuple(  # a log as what it holds past the part both share (capped), and whether it has every ack
        (p.role, p.seq, min(8, len(p.log) - shared), acked <= set(p.log), left(s.mirror_lease_until),
         left(s.witness_lease_until), s.witness_believes_synchronized, ago(p.last_heard_principal),
         ago(p.last_heard_mirror), s.partner_connected, s.principal_was_synchronized, s.caught_up, s.closing,
         min(8, max(0, s.tail_sent_lsn - s.hardened_lsn)), min(8, max(0, len(p.log) - s.acknowledged_lsn)),
         min(8, len(p.log) - s.hardened_lsn), min(8, len(p.waiting)), s.failover_requested, left(p.vote_asked_until),
         ago(s.principal_answered_at), left(s.serves_from), s.config.forced_fork)
        for p, s in ((sim.p[n], sim.p[n].session) for n in PARTNERS))
    return (partners, sim.record, sim.safety, frozenset(sim.dead), frozenset(sim.frozen), frozenset(sim.cut),
            frozenset(sim.w.met), tuple(ago(sim.w.connected[n].last) if n in sim.w.connected else ago(float("-inf"))
                                        for n in PARTNERS), min(8, ago(sim.w.started)),
            max(sim.principals), frozenset(sim.forced_seqs))


def explore(depth: int, starts: dict[str, list[tuple]], report=print) -> dict:
    """Every sequence of EVENTS up to depth from each start; (states, transitions) explored; raises on a violation."""
    states = transitions = 0
    for name, prefix in starts.items():
        root = Sim()
        for event in prefix:
            root.apply(event)
        seen = {state_key(root)}
        frontier: deque[tuple[Sim, list[tuple]]] = deque([(root, [])])
        for level in range(depth):
            nxt: deque[tuple[Sim, list[tuple]]] = deque()
            for sim, path in frontier:
                for event in EVENTS:
                    child = copy.deepcopy(sim)
                    transitions += 1
                    try:
                        child.apply(event)
                    except Violation as exc:
                        raise Violation(f"start {name!r} {prefix}, then {path + [event]}: {exc}") from None
                    key = state_key(child)
                    if key not in seen:
                        seen.add(key)
                        nxt.append((child, path + [event]))
            frontier = nxt
            report(f"  {name}: depth {level + 1}, {len(seen)} states")
        states += len(seen)
    return {"states": states, "transitions": transitions, "depth": depth, "starts": len(starts)}


# the interesting starting states: a healthy session, a principal running exposed, a failover just made,
# a forced-service fork with the old principal back, the witness freshly restarted
STARTS: dict[str, list[tuple]] = {
    "synchronized": [("advance", 1.0)],
    "exposed principal": [("cut_link", "A", "B"), ("advance", 2.0)],
    "after automatic failover": [("isolate", "A"), ("advance", 3.0)],
    "after forced service": [("cut_link", "A", "B"), ("advance", 2.0), ("kill", "A"), ("advance", 2.0), ("force_service",),
                             ("restart", "A"), ("heal", "A", "B"), ("advance", 1.0)],
    "witness restarted": [("kill", "W"), ("restart", "W")],
}


def seed_range(text: str) -> list[int]:
    """'3-7' -> [3, 4, 5, 6, 7]; '5' -> [5] (argparse type)."""
    if re.fullmatch(r"\d+(-\d+)?", text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed range such as 1-12")
    first, _, last = text.partition("-")
    seeds = list(range(int(first), int(last or first) + 1))
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} is empty: the first seed is past the last")
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.core.sim_explore", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("random", help="one long random run")
    r.add_argument("--steps", type=int, default=1_000_000)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--seeds", type=seed_range, help="FIRST-LAST: one run per seed, in turn (instead of --seed)")
    r.add_argument("--max-delay", type=float, default=FAULTY.max_delay, help="in timeouts (0: instant)")
    r.add_argument("--drop", type=float, default=FAULTY.drop)
    r.add_argument("--duplicate", type=float, default=FAULTY.duplicate)
    r.add_argument("--drift", type=float, default=0.1, help="clock rates within 1 ± this")
    e = sub.add_parser("explore", help="every event sequence up to a depth from the starting states")
    e.add_argument("--depth", type=int, default=4)
    args = p.parse_args(argv)
    try:
        if args.mode == "random":
            network = Network(args.max_delay, args.drop, args.duplicate)
            for seed in args.seeds or [args.seed]:  # a violation names its seed and step
                print(f"random run, seed {seed}: {random_run(args.steps, seed, network=network, drift=args.drift)}", flush=True)
        else:
            print(f"explored: {explore(args.depth, STARTS)}")
    except Violation as exc:
        print(f"VIOLATION: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
