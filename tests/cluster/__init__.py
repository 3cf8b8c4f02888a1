"""Tests with real mirrord processes on loopback (see mirrord_testing.localcluster)."""
