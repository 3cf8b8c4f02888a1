"""The nemesis's pure parts: the schedule of a seed, and a checker that catches what it must."""

from __future__ import annotations

import itertools

import pytest

from mirrord_testing.nemesis.checker import (Ack, Ledger, LossReport, SafetyBook, explained_by_forced_service, differing_pages, find_lost, find_lost_unprotected,
                                     find_phantoms, find_shared_tokens, find_split_brain, overlay_wal, page_size_of)
from mirrord_testing.nemesis.schedule import (FAULTS, MAX_DWELL, MIN_DWELL, NEEDS_IPTABLES, NEEDS_LAZYFS, PROCESS_FAULTS, UNDO,
                                      make_schedule)
from mirrord.storage.wal import WalTransaction

NODES = ("a", "b", "c")
DBS = ("d1", "d2")


# ------------------------------------------------------------------ schedule


def test_same_seed_same_schedule_and_other_seeds_differ():
    first = make_schedule(7, 50, NODES, DBS)
    assert first == make_schedule(7, 50, NODES, DBS)
    assert first != make_schedule(8, 50, NODES, DBS)
    assert [r.number for r in first] == list(range(1, 51))


@pytest.mark.parametrize("seed", range(20))
def test_schedule_keeps_its_rules(seed):
    for rnd in make_schedule(seed, 30, NODES, DBS, max_faults=3):
        faults = [s for s in rnd.steps if s.kind in FAULTS]
        assert 1 <= len(faults) <= 3
        process_hits = [s.target[0] for s in faults if s.kind in PROCESS_FAULTS]
        assert len(process_hits) == len(set(process_hits)), "a node takes one process fault per round"
        for i, step in enumerate(rnd.steps):
            assert MIN_DWELL <= step.dwell <= MAX_DWELL
            if step.kind in ("failover", "safety_off", "safety_full", "force"):
                assert step.target[0] in DBS
            elif step.kind in ("cut", "heal"):
                assert len(step.target) == 2 and set(step.target) <= set(NODES) and step.target[0] != step.target[1]
            else:
                assert len(step.target) == 1 and step.target[0] in NODES
            if step.kind in UNDO.values():  # an undo follows its own fault, on the same target
                before = rnd.steps[i - 1]
                assert UNDO[before.kind] == step.kind and before.target == step.target


def test_schedule_covers_every_fault_kind_and_honours_a_subset():
    kinds = {s.kind for r in make_schedule(3, 100, NODES, DBS) for s in r.steps}
    assert set(FAULTS) | set(UNDO.values()) == kinds
    no_cuts = tuple(f for f in FAULTS if f not in NEEDS_IPTABLES)
    kinds = {s.kind for r in make_schedule(3, 100, NODES, DBS, faults=no_cuts) for s in r.steps}
    assert not kinds & {"cut", "heal", "isolate", "rejoin"}
    with pytest.raises(ValueError):
        make_schedule(3, 1, NODES, DBS, faults=("meteor",))


def test_leaving_power_cuts_out_replays_the_schedules_seeds_gave_before_them():
    before = ("kill", "freeze", "cut", "isolate", "endpoint_stop", "failover", "safety_off")
    without = tuple(f for f in FAULTS if f not in NEEDS_LAZYFS and f != "force")
    assert without == before
    kinds = {s.kind for r in make_schedule(5, 30, NODES, DBS) for s in r.steps}
    assert "power-cut" in kinds


def test_leaving_forced_service_out_replays_the_schedules_seeds_gave_before_it():
    assert FAULTS[-1] == "force" and "force" in NEEDS_IPTABLES
    before = ("kill", "freeze", "cut", "isolate", "endpoint_stop", "failover", "safety_off", "power-cut", "disk-full")
    assert FAULTS[:-1] == before
    forced = [s for r in make_schedule(5, 40, NODES, DBS) for s in r.steps if s.kind == "force"]
    assert forced and all(s.target[0] in DBS for s in forced)


def test_forced_service_excuses_only_what_the_loss_report_names_and_the_salvage_copy_holds():
    report = LossReport("d1", "a", 3, 101, 110, frozenset({7, 8}))
    assert explained_by_forced_service(Ack(7, "d1", "a", 3, 105, True), [report])
    assert explained_by_forced_service(Ack(8, "d1", "a", 3, 110, True), [report])  # the range is inclusive
    assert not explained_by_forced_service(Ack(9, "d1", "a", 3, 105, True), [report])  # not salvaged
    assert not explained_by_forced_service(Ack(7, "d1", "a", 3, 100, True), [report])  # before the fork: never lost
    assert not explained_by_forced_service(Ack(7, "d1", "a", 4, 105, True), [report])  # another role sequence
    assert not explained_by_forced_service(Ack(7, "d1", "b", 3, 105, True), [report])  # another node
    assert not explained_by_forced_service(Ack(7, "d2", "a", 3, 105, True), [report])  # another database
    assert not explained_by_forced_service(Ack(7, "d1", "a", 3, 105, True), [])
    nothing_lost = LossReport("d1", "a", 3, 0, 0, frozenset())
    assert not explained_by_forced_service(Ack(7, "d1", "a", 3, 105, True), [nothing_lost])


# ------------------------------------------------------------------ acknowledged writes


def _acks(*specs):
    return [Ack(i, db, node, role_sequence, i, full) for i, db, node, role_sequence, full in specs]


def test_a_lost_full_write_is_found_and_an_unprotected_one_is_only_reported():
    acks = _acks((1, "d1", "a", 1, True), (2, "d1", "a", 1, True), (3, "d1", "a", 1, False), (4, "d2", "b", 1, True))
    present = {1}
    assert [a.id for a in find_lost(acks, "d1", present)] == [2]
    assert [a.id for a in find_lost_unprotected(acks, "d1", present)] == [3]
    assert find_lost(acks, "d1", {1, 2, 3}) == []
    assert [a.id for a in find_lost(acks, "d2", set())] == [4]


def test_two_nodes_acknowledging_in_one_role_sequence_is_split_brain():
    acks = _acks((1, "d1", "a", 1, True), (2, "d1", "a", 1, True), (3, "d1", "b", 2, True), (4, "d2", "a", 2, True))
    assert find_split_brain(acks) == {}  # same role sequence number in another database is not a conflict
    acks += _acks((5, "d1", "b", 1, False))
    assert find_split_brain(acks) == {("d1", 1): {"a", "b"}}


def test_two_writes_acknowledged_with_one_commit_token_are_found():
    acks = _acks((1, "d1", "a", 1, True), (2, "d1", "a", 1, True), (3, "d2", "a", 1, True))
    assert find_shared_tokens(acks) == {}
    acks.append(Ack(4, "d1", "a", 1, 2, True))  # the token (role_sequence 1, lsn 2, seq 0) of write 2
    assert find_shared_tokens(acks) == {("d1", 1, 2, 0): [2, 4]}


def test_writes_sharing_a_commit_have_tokens_of_their_own():
    acks = [Ack(1, "d1", "a", 1, 5, True, 0), Ack(2, "d1", "a", 1, 5, True, 1), Ack(3, "d1", "a", 1, 5, True, 2)]
    assert find_shared_tokens(acks) == {}
    acks.append(Ack(4, "d1", "a", 1, 5, True, 1))  # the place of write 2 in that commit, again
    assert find_shared_tokens(acks) == {("d1", 1, 5, 1): [2, 4]}


def test_phantoms_are_ids_never_sent():
    ledger = Ledger()
    sent = [ledger.new_id("d1") for _ in range(3)]
    assert find_phantoms(ledger.sent["d1"], set(sent)) == set()
    assert find_phantoms(ledger.sent["d1"], {sent[0], 99}) == {99}


def test_ledger_ids_are_unique_across_databases():
    ledger = Ledger()
    ids = [ledger.new_id(db) for db in itertools.islice(itertools.cycle(DBS), 100)]
    assert len(set(ids)) == 100
    ledger.doubt("d1", ids[0])
    assert ledger.in_doubt == {"d1": {ids[0]}}


def test_safety_book_counts_a_write_full_only_if_full_throughout():
    book = SafetyBook(DBS)
    before = book.snapshot("d1")
    assert book.full_throughout("d1", before)
    book.mark_off("d1")
    assert not book.full_throughout("d1", before)  # SAFETY went OFF while it was in flight
    during = book.snapshot("d1")
    book.mark_full("d1")
    assert not book.full_throughout("d1", during)  # sent while OFF
    assert not book.full_throughout("d1", before)  # OFF and back: a different period
    assert book.full_throughout("d1", book.snapshot("d1"))
    assert book.full_throughout("d2", book.snapshot("d2"))
    book.mark_full("d2")  # already FULL: no new period
    assert book.snapshot("d2") == (True, 0)


# ------------------------------------------------------------------ page images


def _page(byte: int, size: int = 512) -> bytes:
    return bytes([byte]) * size


def _db(*pages: bytes, size: int = 512) -> bytes:
    first = bytearray(pages[0])
    first[16:18] = (size if size != 65536 else 1).to_bytes(2, "big")
    return bytes(first) + b"".join(pages[1:])


def test_overlay_puts_later_frames_on_top_and_sets_the_size():
    base = _db(_page(1), _page(2), _page(3))
    tx1 = WalTransaction(((2, _page(9)),), db_size=3, page_size=512)
    tx2 = WalTransaction(((2, _page(8)), (5, _page(5))), db_size=5, page_size=512)
    image = overlay_wal(base, [tx1, tx2])
    assert len(image) == 5 * 512
    assert image[512:1024] == _page(8) and image[4 * 512:] == _page(5) and image[3 * 512:4 * 512] == bytes(512)
    shrink = WalTransaction(((1, base[:512]),), db_size=2, page_size=512)
    assert overlay_wal(base, [tx1, shrink]) == base[:512] + _page(9)
    assert overlay_wal(base, []) == base


def test_differing_pages_finds_each_changed_page_and_a_length_difference():
    a = _db(_page(1), _page(2), _page(3))
    assert page_size_of(a) == 512 and page_size_of(b"") == 4096
    assert differing_pages(a, a) == []
    b = a[:512] + _page(7) + a[1024:]
    assert differing_pages(a, b) == [2]
    assert differing_pages(a, a[:1024]) == [3]
    assert differing_pages(a, a + _page(4)) == [4]
