"""A/B of two revisions' commit path, alternated in the same minutes.

    python benchmarks/ab.py A B [--rounds 3] [--seconds 3] [--clients 1,8,32] [--first-ip 56] [--json out.json] [--witness]

A and B are git revisions of this repository (a hash, a branch, HEAD~3) or
directories holding a checkout (to measure uncommitted work). Each revision is
checked out once into a temporary git worktree; then, round after round,
`benchmarks/commit_bench.py` of A runs, then that of B, each in its own tree
(nodes and load generator alike: a revision is compared whole). The table
gives, per SAFETY mode and concurrency, the median over the rounds of
commits/s, p50 and server CPU per commit on either side, and B / A.

Why a script: on a shared machine a single run of either side says little,
and the load drifts between minutes, so the two sides must take turns. And
why worktrees with their own working directory: a node runs as `python -m
mirrord.node`, which puts its working directory first on sys.path; run from
this checkout, it would import this checkout's code whatever PYTHONPATH says
(an A/B of a tree against itself, which looks like noise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_IP = 56  # inside the benchmarks' 127.0.0.51-59, away from the tests' 127.0.0.11-13
METRICS = ("commits_per_s", "p50_ms", "server_cpu_ms", "principal_cpu_ms", "mirror_cpu_ms", "loadgen_cpu_ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A/B of two revisions' commit path, alternated round by round")
    p.add_argument("a", help="revision or checkout directory A (the baseline)")
    p.add_argument("b", help="revision or checkout directory B")
    p.add_argument("--rounds", type=int, default=3, help="runs of each side, alternated (default 3)")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (default 3)")
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrencies (default 1,8,32)")
    p.add_argument("--first-ip", dest="first_ip", type=int, default=FIRST_IP, help="nodes on 127.0.0.N and N+1")
    p.add_argument("--json", dest="json_out", help="also write every run and the medians to this JSON file")
    p.add_argument("--witness", action="store_true", help="commit_bench --witness: a third node witnesses the mirrored databases")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if not 0 < args.seconds <= 600:
        p.error("--seconds must be in (0, 600]")
    return args


def summarize(runs: dict[str, list[list[dict]]]) -> list[dict]:
    """Per (mode, clients): the median of each metric on each side, and B / A (pure).

    `runs` maps "a" and "b" to one list of commit_bench runs per round.
    """
    cells: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for side, rounds in runs.items():
        for one_round in rounds:
            for run in one_round:
                cells.setdefault((run["mode"], run["clients"]), {"a": [], "b": []})[side].append(run)
    rows = []
    for (mode, clients), sides in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row: dict = {"mode": mode, "clients": clients, "rounds": min(len(sides["a"]), len(sides["b"]))}
        for metric in METRICS:
            a, b = _median(sides["a"], metric), _median(sides["b"], metric)
            row[metric] = {"a": a, "b": b, "ratio": b / a if a and b is not None else None}
        row["errors"] = {side: sum(r.get("errors", 0) for r in sides[side]) for side in ("a", "b")}
        rows.append(row)
    return rows


def _median(runs: list[dict], metric: str) -> float | None:
    values = [r[metric] for r in runs if r.get(metric) is not None]
    return statistics.median(values) if values else None


def _tree(spec: str, scratch: Path, name: str) -> tuple[Path, str]:
    """A directory holding revision `spec`, and what it is (a worktree made here, or the directory given)."""
    if Path(spec).is_dir():
        return Path(spec).resolve(), f"{spec} (a directory, as it is)"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{spec}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"ab.py: {spec!r} is neither a directory nor a revision of {ROOT}: {commit.stderr.strip()}")
    sha = commit.stdout.strip()
    path = scratch / name
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), sha], check=True)
    return path, f"{spec} ({sha[:10]})"


def _bench(tree: Path, args: argparse.Namespace, out: Path) -> list[dict]:
    cmd = [sys.executable, str(tree / "benchmarks" / "commit_bench.py"), "--seconds", str(args.seconds),
           "--clients", args.clients, "--first-ip", str(args.first_ip), "--json", str(out)] + (["--witness"] if args.witness else [])
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ab.py: commit_bench in {tree} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(out.read_text())["runs"]


def _print(rows: list[dict], labels: dict[str, str]) -> None:
    print(f"A = {labels['a']}\nB = {labels['b']}")
    head = (f"{'mode':<12} {'clients':>7} | {'commits/s A':>11} {'B':>8} {'B/A':>5} | {'p50 ms A':>8} {'B':>6} | "
            f"{'CPU ms/commit A':>15} {'B':>6} {'B/A':>5} | {'principal A':>11} {'B':>6} | {'mirror A':>8} {'B':>6} | errors")
    print(head)
    print("-" * len(head))

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"

    for r in rows:
        c, p, cpu = r["commits_per_s"], r["p50_ms"], r["server_cpu_ms"]
        # "-" for a revision whose bench lacks them
        pr, mi, lg = r.get("principal_cpu_ms", {}), r.get("mirror_cpu_ms", {}), r.get("loadgen_cpu_ms", {})
        print(f"{r['mode']:<12} {r['clients']:>7} | {num(c['a'], ',.0f'):>11} {num(c['b'], ',.0f'):>8} {num(c['ratio'], '.2f'):>5} | "
              f"{num(p['a'], '.2f'):>8} {num(p['b'], '.2f'):>6} | {num(cpu['a'], '.3f'):>15} {num(cpu['b'], '.3f'):>6} "
              f"{num(cpu['ratio'], '.2f'):>5} | {num(pr.get('a'), '.3f'):>11} {num(pr.get('b'), '.3f'):>6} | "
              f"{num(mi.get('a'), '.3f'):>8} {num(mi.get('b'), '.3f'):>6} | "
              f"{num(lg.get('a'), '.3f'):>9} {num(lg.get('b'), '.3f'):>6} | {r['errors']['a']}/{r['errors']['b']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at the start; medians of {args.rounds} alternated rounds")
    with tempfile.TemporaryDirectory(prefix="mirrord-ab-") as tmp:
        scratch = Path(tmp)
        made: list[Path] = []
        try:
            trees, labels = {}, {}
            for side, spec in (("a", args.a), ("b", args.b)):
                trees[side], labels[side] = _tree(spec, scratch, side)
                if trees[side].parent == scratch:
                    made.append(trees[side])
            runs: dict[str, list[list[dict]]] = {"a": [], "b": []}
            for n in range(1, args.rounds + 1):
                for side in ("a", "b"):
                    print(f"  round {n}: {side.upper()} ...", flush=True)
                    runs[side].append(_bench(trees[side], args, scratch / f"{side}-{n}.json"))
        finally:
            for path in made:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    rows = summarize(runs)
    _print(rows, labels)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"a": labels["a"], "b": labels["b"], "runs": runs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
