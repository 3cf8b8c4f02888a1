"""The witness's records: valid names only, inside its directory, a bounded count."""

from __future__ import annotations

import json

import pytest

from mirrord.core.quorum import WitnessRecord
from mirrord.core.types import ProtocolError, Safety
from mirrord.engine.witness import Witness


def test_registration_is_bounded_and_checked(tmp_path):
    w = Witness(tmp_path / "w", max_records=2)
    for db in ("a", "b"):
        assert w._registration_refusal(db, "tcp://h:1", "tcp://h:2") is None
        w._save(WitnessRecord(db, 1, "tcp://h:1", "tcp://h:2", True, Safety.FULL))
    assert "limit" in w._registration_refusal("c", "tcp://h:1", "tcp://h:2")
    assert w._registration_refusal("a", "tcp://h:1", "tcp://h:2") is None  # known session: still served
    assert "same endpoint" in w._registration_refusal("a", "tcp://h:1", "tcp://h:1")
    assert "bad endpoint" in w._registration_refusal("a", "nonsense", "tcp://h:1")


@pytest.mark.parametrize("db", ["../../x", "../databases/v2/meta", "a/b", ""])
def test_no_record_outside_its_directory(tmp_path, db):
    w = Witness(tmp_path / "w")
    with pytest.raises(ProtocolError):
        w._save(WitnessRecord(db, 1, "tcp://h:1", "tcp://h:2", True, Safety.FULL))
    assert list(tmp_path.rglob("*.json")) == []


def test_bad_files_are_ignored_at_start(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    rec = WitnessRecord("../x", 1, "tcp://h:1", "tcp://h:2", True, Safety.FULL).to_dict()
    (d / "evil.json").write_text(json.dumps(rec))
    good = WitnessRecord("shop", 1, "tcp://h:1", "tcp://h:2", True, Safety.FULL).to_dict()
    (d / "other.json").write_text(json.dumps(good))  # a record under another name
    (d / "shop.json").write_text(json.dumps(good))
    assert list(Witness(d).records) == ["shop"]
