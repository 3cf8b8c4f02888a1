"""mirrorctl.script: sqlcmd's GO batches."""

from __future__ import annotations

import pytest

from mirrorctl.script import Batch, ScriptError, split_batches


def test_go_lines_split_batches_and_are_never_sent():
    text = "CREATE TABLE t(x)\nGO\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2)\n  go  \nSELECT 1"
    assert split_batches(text) == [
        Batch("CREATE TABLE t(x)", 1, 1),
        Batch("INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2)", 1, 3),
        Batch("SELECT 1", 1, 6),
    ]


def test_go_count_repeats_and_a_trailing_comment_is_allowed():
    assert split_batches("INSERT 1\nGO 3 -- three times\n") == [Batch("INSERT 1", 3, 1)]


def test_empty_and_comment_only_batches_are_skipped():
    assert split_batches("") == []
    assert split_batches("\n\nGO\n-- nothing\nGO\n\n") == []
    assert split_batches("\n\n-- header\nSELECT 1\nGO") == [Batch("-- header\nSELECT 1", 1, 3)]


@pytest.mark.parametrize("line", ["GOTO", "GO x", "SELECT 1 GO", "GO;", "GOOD"])
def test_words_that_are_not_a_go_line_stay_in_the_batch(line):
    assert split_batches(line) == [Batch(line, 1, 1)]


@pytest.mark.parametrize("count", ["0", "1000001"])
def test_a_go_count_out_of_range_is_refused(count):
    with pytest.raises(ScriptError, match=f"line 2: GO {count}"):
        split_batches(f"SELECT 1\nGO {count}")
