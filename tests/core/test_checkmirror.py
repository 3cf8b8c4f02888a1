"""DBCC CHECKMIRROR's pure core: digests, the check of the mirror's answer, the comparison, the schedule; the statement."""

from __future__ import annotations

import pytest

from mirrord.core import checkmirror as cm
from mirrord.core import statements as st
from mirrord.core.rules import refusal
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import Role, StatementSyntaxError


def digests(*tags: int) -> bytes:
    return b"".join(cm.page_digest(bytes([t]) * 512) for t in tags)


def test_identical_copies():
    v = cm.compare("shop", cm.PageDigests(40, 512, digests(1, 2, 3)), cm.PageDigests(40, 512, digests(1, 2, 3)))
    assert v.identical and v.differing == ()
    assert v.message() == "shop: principal and mirror are identical at LSN 40 (3 pages)"
    assert v.row() == {"database": "shop", "lsn": 40, "result": "IDENTICAL", "pages": 3, "mirror_pages": 3,
                       "differing_pages": 0, "first_differing_pages": None}


def test_differing_pages_are_listed():
    v = cm.compare("shop", cm.PageDigests(40, 512, digests(1, 2, 3, 4)), cm.PageDigests(40, 512, digests(1, 9, 3, 8)))
    assert not v.identical and v.differing == (2, 4)
    assert "2 page(s) differ: 2, 4" in v.message() and "DIFFER at LSN 40" in v.message()
    assert v.row()["first_differing_pages"] == "2,4" and v.row()["result"] == "DIFFERENT"


def test_extra_pages_on_either_side_differ():
    v = cm.compare("shop", cm.PageDigests(7, 512, digests(1, 2)), cm.PageDigests(7, 512, digests(1, 2, 3)))
    assert v.differing == (3,) and "the principal has 2 pages, the mirror 3" in v.message()
    v = cm.compare("shop", cm.PageDigests(7, 512, digests(1, 2, 3)), cm.PageDigests(7, 512, digests(1)))
    assert v.differing == (2, 3)


def test_another_page_size_differs_everywhere():
    v = cm.compare("shop", cm.PageDigests(7, 512, digests(1, 2)), cm.PageDigests(7, 1024, digests(1, 2)))
    assert not v.identical and v.page_size_differs and v.differing == (1, 2) and "page sizes differ" in v.message()


def test_many_differing_pages_are_counted_and_the_first_listed():
    n = cm.LISTED_PAGES + 5
    v = cm.compare("shop", cm.PageDigests(1, 512, digests(*[1] * n)), cm.PageDigests(1, 512, digests(*[2] * n)))
    assert len(v.differing) == n and v.message().endswith("and 5 more")
    assert v.row()["first_differing_pages"].count(",") == cm.LISTED_PAGES - 1


def _answer(**changes) -> dict:
    return {"t": "checkmirror_result", "rid": 1, "lsn": 40, "page_size": 4096, "digests": b"\0" * 16, "error": "", **changes}


@pytest.mark.parametrize("answer,why", [
    (_answer(error="redo did not reach LSN 40"), "could not hash its copy: redo did not reach LSN 40"),
    (_answer(lsn=39), "hashed LSN 39, not the LSN 40"),
    (_answer(page_size=1000), "not a power of two"),
    (_answer(page_size=256), "not a power of two in 512..65536"),
    (_answer(page_size=131072), "not a power of two in 512..65536"),
    (_answer(digests=b"\0" * 15), "not 8 per page"),
])
def test_an_answer_that_cannot_be_compared_says_why(answer, why):
    assert why in cm.answer_refusal(answer, 40)


def test_a_good_answer_passes():
    assert cm.answer_refusal(_answer(), 40) is None
    assert cm.answer_refusal(_answer(digests=b""), 40) is None  # an empty database


def test_schedule():
    assert not cm.due(None, 100.0, 0)
    assert cm.due(None, 100.0, 60)
    assert not cm.due(50.0, 100.0, 60) and cm.due(40.0, 100.0, 60)


@pytest.mark.parametrize("text", ["DBCC CHECKMIRROR('shop')", "dbcc checkmirror ( shop )", "DBCC CHECKMIRROR ([shop])",
                                  "DBCC CHECKMIRROR (N'shop') -- comment"])
def test_statement_parses_and_renders(text):
    stmt = st.parse(text)
    assert stmt == st.CheckMirror("shop") and st.parse(stmt.to_sql()) == stmt


@pytest.mark.parametrize("text,message", [
    ("DBCC CHECKMIROR('shop')", "did you mean CHECKMIRROR?"),
    ("DBCC CHECKMIRROR shop", "expected ("),
    ("DBCC CHECKMIRROR('shop'", "expected )"),
    ("DBCC CHECKMIRROR('shop') extra", "extra"),
    ("DBCC CHECKMIRROR('../etc')", "not a valid database name"),
])
def test_statement_errors_say_what_was_expected(text, message):
    with pytest.raises(StatementSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        st.parse(text)


def _session(role: Role, connected: bool = True, suspended: bool = False, partner: str | None = "tcp://b:5022") -> Session:
    s = Session(SessionConfig("shop", role=role, partner=partner, suspended=suspended))
    s.partner_connected = connected
    return s


def test_who_may_run_it():
    stmt = st.CheckMirror("shop")
    assert refusal(_session(Role.PRINCIPAL), stmt) is None
    assert "does not exist" in refusal(None, stmt)
    assert "issue it on the principal tcp://b:5022" in refusal(_session(Role.MIRROR), stmt)
    assert "has no mirror" in refusal(_session(Role.NONE, partner=None), stmt)
    assert "DISCONNECTED" in refusal(_session(Role.PRINCIPAL, connected=False), stmt)
    assert "SET PARTNER RESUME first" in refusal(_session(Role.PRINCIPAL, suspended=True), stmt)


def test_a_large_comparison_finds_the_pages_in_and_past_equal_blocks():
    n = 100_000
    same = digests(*[7] * n)
    other = bytearray(same)
    for pgno in (1, 4096, 4097, n):
        other[(pgno - 1) * cm.DIGEST_BYTES] ^= 1
    v = cm.compare("shop", cm.PageDigests(9, 512, same), cm.PageDigests(9, 512, bytes(other)))
    assert v.differing == (1, 4096, 4097, n)
    assert cm.compare("shop", cm.PageDigests(9, 512, same), cm.PageDigests(9, 512, same)).identical
