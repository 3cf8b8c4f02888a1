"""Where a SAFETY FULL commit spends its time: py-spy on the principal and the mirror under load.

    python benchmarks/profile_commit.py [--clients 1,8] [--seconds 8] [--mode "SAFETY FULL"] [--insecure] [--out DIR]

How it works: a two-node LocalCluster (127.0.0.56-57) with the commit
benchmark's databases; for each concurrency, the load generator (the same
asyncio clients as commit_bench, in this process) runs while `py-spy record`
samples both daemons (all threads, non-blocking, 250 Hz, raw collapsed
stacks). Then, per process, it prints how many samples were taken while busy
(py-spy leaves idle threads out), and the functions with the most samples,
inclusive (the function or anything it called) and self (the function itself),
as a share of the process's busy samples and as CPU ms per commit.

Needs py-spy (the `bench` extra) and the right to ptrace the daemons (root, or
a kernel.yama.ptrace_scope that allows it).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import commit_bench  # noqa: E402

from mirrord_testing.localcluster import LocalCluster  # noqa: E402

RATE = 250
FIRST_IP = 56


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy not found: pip install -e '.[bench]'")
    return found


def _frame_name(frame: str) -> str:
    """'fn (path/to/file.py:123)' -> 'file.py:fn'."""
    name, _, where = frame.partition(" (")
    file = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{file}:{name}" if file else name


def summarize(raw: Path, commits: int, seconds: float, top: int) -> list[str]:
    """Busy samples, then the top functions inclusive and self, from py-spy's raw collapsed stacks."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        thread, frames = frames[0], [_frame_name(f) for f in frames[1:]]
        total += n
        threads[thread.split(" ")[0].strip('"')] += n
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return ["  no busy samples"]
    ms_per_sample = 1000 / RATE
    per_commit = (lambda n: n * ms_per_sample / commits if commits else float("nan"))
    lines = [f"  busy samples {total} = {total * ms_per_sample / 1000 / seconds:.0%} of one core over {seconds:g} s; "
             f"{per_commit(total):.3f} CPU ms per commit ({commits:,} commits)",
             "  by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.most_common(6))]
    lines.append("  inclusive (function and what it calls):")
    for name, n in inclusive.most_common(top):
        lines.append(f"    {n / total:6.1%}  {per_commit(n):.3f} ms/commit  {name}")
    lines.append("  self:")
    for name, n in own.most_common(top):
        lines.append(f"    {n / total:6.1%}  {per_commit(n):.3f} ms/commit  {name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="py-spy profile of the commit path on principal and mirror")
    p.add_argument("--clients", default="1,8")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--mode", default="SAFETY FULL", choices=list(commit_bench.MODES))
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", help="keep the raw py-spy outputs here")
    p.add_argument("--insecure", action="store_true", help="nodes without TLS and logins (to see what they cost)")
    args = p.parse_args(argv)
    spy = py_spy()
    out = Path(args.out) if args.out else None
    with tempfile.TemporaryDirectory(prefix="mirrord-profile-") as tmp:
        with LocalCluster(Path(tmp), names=("a", "b"), first_ip=FIRST_IP, secure=not args.insecure) as cluster:
            cluster.start_all()
            commit_bench.prepare(cluster)
            for clients in [int(c) for c in args.clients.split(",")]:
                raws, procs = {}, []
                duration = int(args.seconds + commit_bench.WARMUP + 1)
                for node in cluster:
                    raws[node.name] = Path(tmp) / f"{node.name}-{clients}.txt"
                    procs.append(subprocess.Popen(
                        [spy, "record", "--pid", str(node.pid), "--rate", str(RATE), "--duration", str(duration),
                         "--nonblocking", "--threads", "--format", "raw", "--output", str(raws[node.name])],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                run = commit_bench.run_one(cluster["a"].address, args.mode, clients, args.seconds)
                for proc in procs:
                    _, err = proc.communicate(timeout=duration + 30)
                    if proc.returncode != 0:
                        print(f"py-spy failed: {err.decode(errors='replace')[-400:]}")
                print(f"\n=== {args.mode}, {clients} client(s): {run.commits_per_s:,.0f} commits/s, p50 {run.p50_ms:.2f} ms, "
                      f"p99 {run.p99_ms:.2f} ms (under py-spy)")
                commits = int(run.commits_per_s * duration)  # py-spy's window covers warm-up too
                for name, raw in raws.items():
                    role = "principal" if name == "a" else "mirror"
                    print(f"--- {role} ({name}):")
                    if raw.exists():
                        print("\n".join(summarize(raw, commits, duration, args.top)))
                        if out:
                            out.mkdir(parents=True, exist_ok=True)
                            shutil.copy(raw, out / raw.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
