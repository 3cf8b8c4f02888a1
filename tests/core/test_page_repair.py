"""core.page_repair: the view's rows (bounded, one per page), and the checks of a request and an answer."""

from __future__ import annotations

import pytest

from mirrord.core import page_repair as pr


def test_a_page_has_one_row_that_moves_through_its_statuses():
    h = pr.RepairHistory()
    h.note("db", 5, pr.ERROR_CHECKSUM, pr.QUEUED_FOR_REQUEST, "t1")
    h.note("db", 5, pr.ERROR_CHECKSUM, pr.QUEUED_FOR_DELIVERY, "t2")
    h.note("db", 5, pr.ERROR_IO, pr.REPAIRED, "t3")  # an attempt under way keeps the error it began with
    assert h.rows() == [{"database": "db", "page_id": 5, "error_type": pr.ERROR_CHECKSUM,
                         "page_status": pr.REPAIRED, "modification_time": "t3"}]
    assert h.status("db", 5) == pr.REPAIRED and h.status("db", 6) is None
    h.note("db", 5, pr.ERROR_IO, pr.QUEUED_FOR_REQUEST, "t4")  # damaged again: a new attempt, its own error
    assert h.rows()[0]["error_type"] == pr.ERROR_IO and h.rows()[0]["page_status"] == pr.QUEUED_FOR_REQUEST


def test_rows_are_bounded_newest_change_last_and_by_database():
    h = pr.RepairHistory(max_rows=3)
    for page in (1, 2, 3):
        h.note("a", page, pr.ERROR_CHECKSUM, pr.REPAIRED, f"t{page}")
    h.note("b", 9, pr.ERROR_CHECKSUM, pr.IRREPARABLE, "t9")
    assert [(r["database"], r["page_id"]) for r in h.rows()] == [("a", 2), ("a", 3), ("b", 9)]
    assert [r["page_id"] for r in h.rows("b")] == [9]
    assert h.count("a", pr.REPAIRED) == 2 and h.count("b", pr.REPAIRED) == 0
    assert pr.MAX_ROWS == 100  # the reference's view keeps 100 pages


@pytest.mark.parametrize("pages, why", [
    ([], "1..64"), ([0], "page 0"), ([True], "page True"), (["1"], "page '1'"), ([1, 1], "repeat"),
    (list(range(1, 66)), "1..64"), ("1", "1..64"), ([2 ** 32], "page 4294967296"),
])
def test_a_request_is_refused_with_why(pages, why):
    assert why in pr.request_refusal(pages, 0xFFFFFFFF)


def test_a_good_request_passes():
    assert pr.request_refusal([1, 5, 64], 0xFFFFFFFF) is None


def answer(**changes) -> dict:
    msg = {"t": "page_answer", "rid": 1, "lsn": 40, "page_size": 512, "pages": [[3, b"x" * 512], [7, b"y" * 512]], "error": ""}
    return {**msg, **changes}


@pytest.mark.parametrize("changes, asked, redo, size, why", [
    ({"error": "disk"}, {3, 7}, 10, 512, "could not read the pages: disk"),
    ({"lsn": 9}, {3, 7}, 10, 512, "before this mirror's redo LSN 10"),
    ({}, {3, 7}, 10, 1024, "page size 512 is not this copy's 1024"),
    ({}, {3}, 10, 512, "page 7 was not asked for"),
    ({"pages": [[3, b"x" * 512], [3, b"x" * 512]]}, {3, 7}, 10, 512, "page 3 was not asked for (or comes twice)"),
    ({"pages": [[3, b"x" * 511]]}, {3, 7}, 10, 512, "511 bytes"),
    ({"pages": [[3]]}, {3, 7}, 10, 512, "[page number, image] pairs"),
    ({"pages": [["3", b"x" * 512]]}, {3, 7}, 10, 512, "[page number, image] pairs"),
])
def test_an_answer_is_refused_with_why(changes, asked, redo, size, why):
    assert why in pr.answer_refusal(answer(**changes), asked, redo, size)


def test_a_good_answer_passes_and_may_leave_out_pages_past_the_end():
    assert pr.answer_refusal(answer(), {3, 7}, 40, 512) is None
    assert pr.answer_refusal(answer(pages=[[3, b"x" * 512]]), {3, 7}, 40, None) is None
