"""The witness: a node's role for the databases it witnesses. It serves no data.

Per database it keeps, durably (witness/<db>.json), the `WitnessRecord`: the
role sequence, who is principal and mirror, and whether the mirror is known
to be synchronized. Each partner keeps one connection to it and pings over
it; every answer is a `w_state` carrying the record and whether the witness
currently sees each partner, which is how partners learn of role changes they
missed. Decisions (votes, reports, manual failover) are the pure functions of
`core.quorum`, and what the witness observes of each session (who it sees,
has met, last answered) is `core.witnessing`'s; this module persists their
result *before* answering.

The witness "sees" a partner while its connection is open and it has heard
from it within PARTNER TIMEOUT. A closed or reset connection (a killed
process) stops that at once: a hard error counts at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from mirrord.core import messages, quorum
from mirrord.core.names import PathOutside, inside, is_db_name
from mirrord.core.quorum import VoteRequest, WitnessRecord
from mirrord.core.witnessing import Witnessing
from mirrord.core.types import Endpoint, ProtocolError, Safety
from mirrord.net import framing
from mirrord.storage.fileutil import NO_SPACE, atomic_write_json, read_json

if TYPE_CHECKING:
    from mirrord.storage.events import EventLog

log = structlog.get_logger()

# A witness keeps one record per session a principal registered; without a bound,
# every made-up name would add a file for good.
MAX_RECORDS = 1024


class Witness:
    """All databases this node witnesses."""

    def __init__(self, directory: Path, max_records: int = MAX_RECORDS, events: "EventLog | None" = None) -> None:
        self.directory = directory
        self.events = events  # the node's event history
        self.max_records = max_records
        directory.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()  # a fresh witness has not yet seen anyone go silent
        self.sessions: dict[str, Witnessing] = {}  # db -> its record and what this witness observed since it started
        self.votes: dict[tuple[str, bool], int] = {}  # (db, granted) -> votes cast since this process started
        for path in sorted(directory.glob("*.json")):
            rec = WitnessRecord.from_dict(read_json(path))
            if not is_db_name(rec.db) or path.name != f"{rec.db}.json":
                log.warning("witness_record_ignored", file=path.name, reason="not a valid database name, or not its own file")
                continue
            self._session(rec.db).adopt(rec)

    @property
    def records(self) -> dict[str, WitnessRecord]:
        """The record of each database witnessed (a new dict: for views and metrics, not per message)."""
        return {db: w.record for db, w in self.sessions.items() if w.record is not None}

    def record_of(self, db: str) -> WitnessRecord | None:
        """db's record, None if this witness has none."""
        w = self.sessions.get(db)
        return None if w is None else w.record

    def _session(self, db: str) -> Witnessing:
        w = self.sessions.get(db)
        if w is None:
            w = self.sessions[db] = Witnessing(None, self.started)
        return w

    def _path(self, db: str) -> Path:
        """witness/<db>.json, refused unless db is a valid name and the file stays in the directory."""
        if not is_db_name(db):
            raise ProtocolError(f"{db!r} is not a valid database name")
        try:
            return inside(self.directory, f"{db}.json")
        except PathOutside as exc:
            raise ProtocolError(f"witness record of {db!r}: {exc}") from None

    def _save(self, rec: WitnessRecord) -> None:
        atomic_write_json(self._path(rec.db), rec.to_dict())
        old = self.record_of(rec.db)
        self._session(rec.db).adopt(rec)
        if old is None or old.role_sequence != rec.role_sequence or old.principal != rec.principal:
            log.info("witness_record", database=rec.db, role_sequence=rec.role_sequence, principal=rec.principal, mirror=rec.mirror)
            self._record(rec.db, "WITNESS_RECORD", f"principal {rec.principal}, mirror {rec.mirror}", rec.role_sequence)

    def _record(self, db: str, event: str, detail: str, role_sequence: int | None = None) -> None:
        if self.events is not None:
            if role_sequence is None and (rec := self.record_of(db)) is not None:
                role_sequence = rec.role_sequence
            self.events.record(db, event, role="WITNESS", role_sequence=role_sequence, detail=detail)

    def sees(self, db: str, endpoint: str) -> bool:
        """Does the witness currently hear from this partner (within the longer of its TIMEOUT and the record's)?"""
        w = self.sessions.get(db)
        return w is not None and w.sees(endpoint, time.monotonic())

    def state(self, db: str, rid: int, **extra) -> dict:
        """The w_state answer for a database."""
        rec = self.sessions[db].record
        return {
            "t": "w_state", "rid": rid, "role_sequence": rec.role_sequence, "principal": rec.principal, "mirror": rec.mirror,
            "mirror_synchronized": rec.mirror_synchronized, "principal_connected": self.sees(db, rec.principal),
            "mirror_connected": self.sees(db, rec.mirror), "forced": rec.forced, **extra,
        }

    def rows(self) -> list[dict]:
        """Rows of sys.database_mirroring_witnesses."""
        return [
            {
                "database": r.db, "principal": r.principal, "mirror": r.mirror, "role_sequence": r.role_sequence,
                "safety": r.safety.value, "mirror_synchronized": r.mirror_synchronized,
                "principal_connected": self.sees(r.db, r.principal), "mirror_connected": self.sees(r.db, r.mirror),
                "forced": r.forced,
            }
            for r in self.records.values()
        ]

    # ---------------------------------------------------------------- connections

    async def serve(self, node_name: str, hello: dict, reader, writer) -> None:
        """Serve one partner's witness connection until it fails."""
        db, sender = hello["db"], hello["from_endpoint"]
        if not 1 <= hello["timeout"] <= 3600 or hello["role"] not in ("PRINCIPAL", "MIRROR"):
            raise ProtocolError(f"bad w_hello: role {hello['role']!r}, timeout {hello['timeout']!r}")
        if hello["role"] == "PRINCIPAL":
            if (why := self._registration_refusal(db, sender, hello["partner"])) is not None:
                log.warning("witness_registration_refused", database=db, partner=sender, reason=why)
                framing.write_message(writer, {"t": "refuse", "reason": why})
                await writer.drain()
                return
            old = self.record_of(db)
            rec = quorum.adopt_principal_claim(
                old, db, sender, hello["partner"], hello["role_sequence"], hello["synchronized"], Safety(hello["safety"]),
                hello["timeout"],
            )
            if rec is not old:
                self._save(rec)
        if self.record_of(db) is None:
            framing.write_message(writer, {"t": "refuse", "reason": f"the witness {node_name} has no record of {db} yet; the principal registers it"})
            await writer.drain()
            return
        w = self._session(db)
        seen = w.note_connected(sender, float(hello["timeout"]), time.monotonic())
        log.info("witness_partner_connected", database=db, partner=sender, role=hello["role"], role_sequence=hello["role_sequence"])
        self._record(db, "WITNESS_PARTNER_CONNECTED", f"{sender} ({hello['role']}, role sequence {hello['role_sequence']})")
        try:
            w.note_answered(sender, time.monotonic())
            framing.write_message(writer, self.state(db, 0))
            await writer.drain()
            while True:
                msg = messages.validate(await asyncio.wait_for(framing.read_message(reader), seen.timeout))
                w.note_heard(sender, time.monotonic())
                answer = self._answer_durably(db, sender, msg)
                w.note_answered(sender, time.monotonic())  # from before it is written: the lease cannot start earlier
                framing.write_message(writer, answer)
                await writer.drain()
        finally:
            w.note_lost(sender, seen)
            log.info("witness_partner_lost", database=db, partner=sender)
            self._record(db, "WITNESS_PARTNER_LOST", sender)

    def _registration_refusal(self, db: str, sender: str, partner: str) -> str | None:
        """Why a principal's w_hello may not add or update the record of db, or None."""
        try:
            sender_ep, partner_ep = Endpoint.parse(sender), Endpoint.parse(partner)
        except ValueError as exc:
            return f"w_hello names a bad endpoint: {exc}"
        if sender_ep == partner_ep:
            return "w_hello names the same endpoint as principal and mirror"
        if self.record_of(db) is None and len(self.records) >= self.max_records:
            return (f"this witness already keeps {self.max_records} sessions, its limit; "
                    "remove a witness (SET WITNESS OFF) elsewhere or use another witness")
        return None

    def _answer_durably(self, db: str, sender: str, msg: dict) -> dict:
        """The answer; on a full disk, a refusal: nothing is granted or accepted that was not recorded first."""
        try:
            return self._answer(db, sender, msg)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            log.error("witness_record_not_saved", database=db, error=exc.strerror, request=msg["t"])
            return self.state(db, msg["rid"], accepted=False, granted=False,
                              reason=f"the witness cannot record it: its disk is full ({exc.strerror})")

    def _answer(self, db: str, sender: str, msg: dict) -> dict:
        kind, rec = msg["t"], self.sessions[db].record
        if kind == "w_ping":
            return self.state(db, msg["rid"])
        if kind == "w_report":
            if isinstance(msg.get("timeout"), int) and 1 <= msg["timeout"] <= 3600:
                self.sessions[db].note_timeout(sender, float(msg["timeout"]))
            new = quorum.apply_principal_report(rec, sender, msg["role_sequence"], msg["synchronized"], Safety(msg["safety"]), msg.get("timeout"))
            if new is not None and new != rec:
                self._save(new)
            return self.state(db, msg["rid"], accepted=new is not None)
        if kind == "w_switch":
            new = quorum.apply_manual_failover(rec, sender, msg["role_sequence"])
            if new is not None:
                self._save(new)
            return self.state(db, msg["rid"], accepted=new is not None)
        if kind == "w_vote":
            return self._vote(db, sender, msg)
        raise ProtocolError(f"unexpected {kind} on a witness connection")

    def _vote(self, db: str, sender: str, msg: dict) -> dict:
        req = VoteRequest(db, sender, msg["role_sequence"], msg["hardened_lsn"], msg["forced"])
        vote, new = self.sessions[db].vote(req, time.monotonic())
        self.votes[db, vote.granted] = self.votes.get((db, vote.granted), 0) + 1
        if vote.granted:
            self._save(new)  # durable before the mirror hears of it
            self._record(db, "WITNESS_VOTE", f"granted to {sender}{' (forced service)' if req.forced else ''}: {vote.reason}",
                         vote.role_sequence)
        (log.warning if vote.granted else log.debug)("witness_vote", database=db, requester=sender, granted=vote.granted, reason=vote.reason, role_sequence=vote.role_sequence, forced=req.forced)
        return self.state(db, msg["rid"], granted=vote.granted, reason=vote.reason)
