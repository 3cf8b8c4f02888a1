"""The nemesis: seeded faults against a real three-node cluster, and a checker of the invariants.

schedule.py (pure: the fault schedule of a seed), checker.py (pure: what is
checked), runner.py (the cluster, the writers, faults, healing), __main__.py
(the command: `python -m mirrord_testing.nemesis --rounds N --seed S`).
"""
