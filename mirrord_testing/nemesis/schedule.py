"""The nemesis's fault schedule: pure data generated from a seed.

A schedule is a list of rounds; a round is a list of steps, each a fault (or
the undoing of one) followed by a dwell time during which the writers keep
writing. Steps name nodes and databases, never processes or addresses, so the
same seed gives the same schedule on any machine: what a step *does* still
depends on timing (a failover may be refused because the mirror is behind),
which the runner reports.

Rules the generator keeps, so that every step is meaningful:
* a node is hit by at most one process fault per round (kill, freeze or
  power-cut), and a killed node is not also frozen;
* a fault that is undone within the round is undone after its own dwell;
  whatever is still broken at the end of the round is healed by the runner.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

# fault -> its undoing, done mid-round or by the runner's heal
UNDO = {
    "kill": "restart",
    "freeze": "thaw",
    "cut": "heal",
    "isolate": "rejoin",
    "endpoint_stop": "endpoint_start",
    "safety_off": "safety_full",
    "power-cut": "restart",
    "disk-full": "disk-space",
}
# power-cut, disk-full and force are last: leaving them out (no FUSE, --no-power-cuts,
# --no-forced-service) gives the schedules that seeds gave before they existed.
# force(db): cut the principal from its mirror (it runs exposed and acknowledges
# alone), kill it, FORCE_SERVICE_ALLOW_DATA_LOSS on the mirror; undone by the heal
# (restart, RESUME once the loss report was read).
FAULTS = ("kill", "freeze", "cut", "isolate", "endpoint_stop", "failover", "safety_off", "power-cut", "disk-full", "force")
PROCESS_FAULTS = ("kill", "freeze", "power-cut")
NEEDS_IPTABLES = ("cut", "isolate", "force")
NEEDS_LAZYFS = ("power-cut", "disk-full")  # the node's data directory on mirrord_testing/nemesis/lazyfs.py
UNDOES = tuple(UNDO.values())

MIN_DWELL = 0.3
MAX_DWELL = 4.0  # above PARTNER TIMEOUT 2, so that a fault often outlasts it


@dataclass(frozen=True)
class Step:
    """One action: kind, its target (node names or a database), then a dwell in seconds."""

    kind: str
    target: tuple[str, ...]
    dwell: float

    def describe(self) -> str:
        """e.g. 'cut(a,b) 1.2s'."""
        return f"{self.kind}({','.join(self.target)}) {self.dwell:.1f}s"


@dataclass(frozen=True)
class Round:
    """The steps of one round, in order."""

    number: int
    steps: tuple[Step, ...]


def make_schedule(seed: int, rounds: int, nodes: tuple[str, ...], databases: tuple[str, ...],
                  max_faults: int = 3, faults: tuple[str, ...] = FAULTS) -> list[Round]:
    """The rounds for a seed: deterministic, 1..max_faults faults per round, of the given kinds."""
    unknown = set(faults) - set(FAULTS)
    if unknown or not faults:
        raise ValueError(f"fault kinds must be a non-empty subset of {FAULTS}; got {faults}")
    rng = random.Random(seed)
    return [_make_round(rng, n + 1, nodes, databases, max_faults, faults) for n in range(rounds)]


def _make_round(rng: random.Random, number: int, nodes: tuple[str, ...], databases: tuple[str, ...],
                max_faults: int, faults: tuple[str, ...]) -> Round:
    steps: list[Step] = []
    hit: set[str] = set()  # nodes that already took a process fault this round
    pairs = [tuple(p) for p in itertools.combinations(nodes, 2)]
    for _ in range(rng.randint(1, max_faults)):
        kind = rng.choice(faults)
        if kind in PROCESS_FAULTS:
            free = [n for n in nodes if n not in hit]
            if not free:
                kind = "endpoint_stop"
            else:
                target: tuple[str, ...] = (rng.choice(free),)
                hit.add(target[0])
        if kind == "cut":
            target = rng.choice(pairs)
        elif kind in ("endpoint_stop", "isolate", "disk-full"):
            target = (rng.choice(nodes),)
        elif kind in ("failover", "safety_off", "force"):
            target = (rng.choice(databases),)
        steps.append(Step(kind, target, _dwell(rng)))
        if kind in UNDO and rng.random() < 0.6:
            steps.append(Step(UNDO[kind], target, _dwell(rng)))
    return Round(number, tuple(steps))


def _dwell(rng: random.Random) -> float:
    return round(rng.uniform(MIN_DWELL, MAX_DWELL), 1)
