"""Tools to test mirrord with real processes, kept out of the daemon's package.

`localcluster` starts real mirrord processes on loopback addresses (tests, the
demo, benchmarks); `nemesis` runs seeded faults against such a cluster and
checks the invariants (`python -m mirrord_testing.nemesis`); `fuzz` feeds
hostile input to every parser a peer or client reaches.
"""
