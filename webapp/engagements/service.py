"""Recording engagements: reconcile the event's identifiers, then store it against a contact row.

``identify`` commits on its own; each group of events that share identifiers
is then stored in one short write transaction that holds the lock on the
primary row of the customer owning the chosen contact row (the rule every
writer to a customer follows, see identity/service.py). Idempotency rests on
the unique (channel, external_id) key: a concurrent duplicate makes the
insert fail, the transaction runs again and finds the first event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from flask import current_app
from sqlalchemy import Connection, insert, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError

from ..api.errors import ApiError, unstorable_value_error
from ..database import (
    SQLITE_IMMEDIATE,
    Contention,
    describe,
    refuses_a_value,
    retry_window,
    run_write_transaction,
)
from ..extensions import db
from ..identity.rules import EMAIL, Key, Row, Value
from ..identity.search_index import index_names
from ..identity.service import (
    BlockedValues,
    blocked_keys,
    identify,
    load_customer_rows,
    lock_customers,
    lock_keys,
)
from ..models import Contact, utcnow
from .models import (
    NAME_FROM_EVENT,
    ContactName,
    Engagement,
    ScreenPop,
    call_duration,
    name_key,
)
from .payloads import EventInput

log = logging.getLogger(__name__)

_c = Contact.__table__.c
_e = Engagement.__table__.c
_n = ContactName.__table__.c

# Times a group is re-identified when its contact row was deleted under it.
_MAX_RESOLVE_ROUNDS = 3


@dataclass(frozen=True)
class Recorded:
    """What happened to one event: its id, where it landed, and whether it was a repeat."""

    event_id: int
    contact_id: int
    customer_id: int
    duplicate: bool


def _key(event: EventInput) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((v.kind, v.key) for v in event.values))


def pick_contact_row(values: Sequence[Value], rows: Sequence[Row], blocked: set) -> Row | None:
    """The contact row an event with ``values`` is stored against.

    The oldest row holding every (unblocked) value, else the oldest holding the
    e-mail, else the oldest holding the phone: an event follows the identifier
    it came with when a customer is later split.
    """
    usable = [v for v in values if (v.kind, v.key) not in blocked]
    ordered = sorted(rows, key=lambda r: (r.created_at, r.id))

    def holds(row: Row, value: Value) -> bool:
        return (value.kind, value.key) in set(row.identifiers())

    for row in ordered:
        if usable and all(holds(row, v) for v in usable):
            return row
    for kind in (EMAIL, "phone"):
        for value in (v for v in usable if v.kind == kind):
            for row in ordered:
                if holds(row, value):
                    return row
    return None


@dataclass(frozen=True)
class _Signature:
    """What an event says, which a repeat under its (channel, externalId) must say too.

    Not who sent it: a retry may be identified another way (by the phone where
    the first try had the e-mail), and its customer may have been merged or split since.
    """

    direction: str | None
    summary: str | None
    url: str | None
    duration_seconds: int | None
    occurred_at: datetime

    @classmethod
    def of(cls, event: EventInput) -> _Signature:
        return cls(
            event.direction, event.summary, event.url, event.duration_seconds, event.occurred_at
        )

    def matches(self, event: EventInput) -> bool:
        """Whether ``event`` repeats this one; its time counts only if the client sent one."""
        other = _Signature.of(event)
        if not event.occurred_at_sent:
            other = replace(other, occurred_at=self.occurred_at)
        return other == self


@dataclass(frozen=True)
class _Stored:
    """An event stored under a (channel, externalId): the answer to a repeat, and what it said."""

    recorded: Recorded
    signature: _Signature


def _reused_error() -> ApiError:
    # The stored event is not named: the request is another event, maybe another customer's.
    return ApiError(
        422,
        "external_id_reused",
        "this channel's externalId came before with another event; "
        "a retry sends the same event, and a new event needs an id of its own",
        {"externalId": "already used for another event"},
    )


def _existing_events(conn: Connection, events: Sequence[EventInput]) -> dict[tuple, _Stored]:
    """{(channel, external_id): the stored event} of the events already stored."""
    pairs = sorted({(e.channel, e.external_id) for e in events if e.external_id})
    if not pairs:
        return {}
    found = conn.execute(
        select(
            _e.channel,
            _e.external_id,
            _e.id,
            _e.contact_id,
            _c.linkedId,
            _e.direction,
            _e.summary,
            _e.url,
            _e.duration_seconds,
            _e.occurred_at,
        )
        .join(Contact.__table__, _c.id == _e.contact_id)
        .where(tuple_(_e.channel, _e.external_id).in_(pairs))
    )
    return {
        (row.channel, row.external_id): _Stored(
            Recorded(row.id, row.contact_id, row.linkedId or row.contact_id, True),
            _Signature(row.direction, row.summary, row.url, row.duration_seconds, row.occurred_at),
        )
        for row in found
    }


def _repeat_answer(event: EventInput, stored: _Stored) -> Recorded | ApiError:
    return stored.recorded if stored.signature.matches(event) else _reused_error()


def lock_customer_of(conn: Connection, contact_id: int) -> tuple[int, bool] | None:
    """Lock the primary row of the customer holding ``contact_id``; (primary id, row is live).

    None when no such row exists.
    """

    def read(_held: frozenset[int]):
        found = conn.execute(
            select(_c.linkedId, _c.deletedAt).where(_c.id == contact_id)
        ).one_or_none()
        if found is None:
            return None, ()
        primary_id = found.linkedId if found.linkedId is not None else contact_id
        return (primary_id, found.deletedAt is None), (primary_id,)

    return lock_customers(conn, read)


@dataclass(frozen=True)
class Pick:
    """What a contact row was picked by: the events' keys, and which of them were blocked."""

    keys: tuple[Key, ...]
    blocked: frozenset[Key] = frozenset()


def _store(
    contact_id: int, events: Sequence[EventInput], for_pop: int | None, pick: Pick
) -> list[Recorded | ApiError] | None:
    """Insert ``events`` against ``contact_id`` (one transaction).

    None if the row is gone, or if a value was blocked or unblocked since the
    row was picked (read again under its claim lock, which a block takes too).
    """
    conn = db.session.connection(execution_options={SQLITE_IMMEDIATE: True})
    if lock_keys(conn, pick.keys) != pick.blocked:
        db.session.rollback()
        return None
    locked = lock_customer_of(conn, contact_id)
    if locked is None or not locked[1]:
        db.session.rollback()
        return None
    customer_id = locked[0]
    if for_pop is not None:
        filed, duration = _filed_call(conn, for_pop)
        if filed is not None:
            db.session.rollback()
            return [filed]
        if duration is not None:
            # The call ended before it was filed (its caller became a customer later): its
            # length, read under the pop's lock, goes with it (POST /calls/status).
            events = [replace(event, duration_seconds=duration) for event in events]
    existing = _existing_events(conn, events)
    # Per event: the stored event it repeats (or the refusal of a reused externalId), or
    # the row it adds (and whether a repeat).
    slots: list[tuple[Recorded | ApiError | Engagement, bool]] = []
    claimed: dict[tuple, Engagement] = {}
    for event in events:
        pair = (event.channel, event.external_id)
        if event.external_id and pair in existing:
            # Stored since record_events looked (a concurrent copy): checked the same way.
            slots.append((_repeat_answer(event, existing[pair]), True))
        elif event.external_id and pair in claimed:
            # A repeat inside the same batch answers with the first one's row.
            slots.append((claimed[pair], True))
        else:
            row = Engagement(
                contact_id=contact_id,
                channel=event.channel,
                direction=event.direction,
                occurred_at=event.occurred_at,
                summary=event.summary,
                url=event.url,
                duration_seconds=event.duration_seconds,
                external_id=event.external_id,
                created_at=utcnow(),
            )
            db.session.add(row)
            if event.external_id:
                claimed[pair] = row
            slots.append((row, False))
    # Repeats store nothing, their names included.
    _add_event_names(
        conn, contact_id, [e for e, (_, repeat) in zip(events, slots, strict=True) if not repeat]
    )
    db.session.flush()
    # Read the ids before the commit expires the rows.
    answers = [
        target
        if isinstance(target, Recorded | ApiError)
        else Recorded(target.id, contact_id, customer_id, duplicate)
        for target, duplicate in slots
    ]
    if for_pop is not None and isinstance(answers[0], Recorded):
        conn.execute(
            update(ScreenPop)
            .where(ScreenPop.id == for_pop)
            .values(engagement_id=answers[0].event_id)
        )
    db.session.commit()
    return answers


def _filed_call(conn: Connection, pop_id: int) -> tuple[Recorded | None, int | None]:
    """The call event a screen-pop is linked to already (else None), its row locked first,
    and the call's length if it ended (else None)."""
    pop = conn.execute(
        select(
            ScreenPop.engagement_id,
            ScreenPop.answered_at,
            ScreenPop.ended_at,
            ScreenPop.duration_seconds,
        )
        .where(ScreenPop.id == pop_id)
        .with_for_update()
    ).first()
    if pop is None:
        return None, None
    duration = call_duration(pop.answered_at, pop.ended_at, pop.duration_seconds)
    event_id = pop.engagement_id
    if event_id is None:
        return None, duration
    contact_id, linked = conn.execute(
        select(_e.contact_id, _c.linkedId)
        .join(Contact.__table__, _c.id == _e.contact_id)
        .where(_e.id == event_id)
    ).one()
    return Recorded(event_id, contact_id, linked or contact_id, True), duration


def _add_event_names(conn: Connection, contact_id: int, events: Sequence[EventInput]) -> None:
    """Keep each new name the events carry against the contact row, once per spelling, indexed."""
    names: dict[str, str] = {}
    for event in events:
        if event.name:
            names.setdefault(name_key(event.name), event.name)
    if not names:
        return
    known = set(
        conn.scalars(
            select(_n.name_key).where(
                _n.contact_id == contact_id,
                _n.source == NAME_FROM_EVENT,
                _n.name_key.in_(list(names)),
            )
        )
    )
    now = utcnow()
    rows = [
        {
            "contact_id": contact_id,
            "name": name,
            "name_key": key,
            "source": NAME_FROM_EVENT,
            "created_at": now,
        }
        for key, name in names.items()
        if key not in known
    ]
    if rows:
        conn.execute(insert(ContactName.__table__), rows)
        index_names(conn, contact_id, [row["name_key"] for row in rows])


def _blocked_error(values: Sequence[Value]) -> ApiError:
    names = {EMAIL: "email", "phone": "phoneNumber"}
    return ApiError(
        422,
        "blocked_identifier",
        "every identifier of this event is blocked, so it belongs to no customer",
        {names[v.kind]: "this value is blocked" for v in values},
    )


def store_events(
    contact_id: int, events: Sequence[EventInput], pick: Pick, *, for_pop: int | None = None
) -> list[Recorded | ApiError] | None:
    """Store events against a contact row picked by ``pick``; None when that no longer holds.

    None: the row was deleted meanwhile, or a value of the pick was blocked or
    unblocked (the caller resolves again).

    ``for_pop``: the screen-pop whose call the one event is. It is linked to
    the pop in the same transaction, under the pop's row lock, and when the pop
    has its call already (another agent filed it) that event is answered instead.
    """
    return run_write_transaction(
        lambda: _store(contact_id, events, for_pop, pick),
        current_app.config["IDENTIFY_MAX_ATTEMPTS"],
    )


def _record_group(events: Sequence[EventInput]) -> list[Recorded | ApiError]:
    """Reconcile the identifiers the events share, then store them all against one row."""
    values = events[0].values
    for _ in range(_MAX_RESOLVE_ROUNDS):
        try:
            identify(values, source="event")
        except BlockedValues:
            raise _blocked_error(values) from None
        conn = db.session.connection()
        rows = load_customer_rows(conn, values)
        keys = tuple((v.kind, v.key) for v in values)
        blocked = blocked_keys(conn, keys)
        contact = pick_contact_row(values, rows, blocked)
        db.session.rollback()
        if contact is None:
            raise _blocked_error(values)
        stored = store_events(contact.id, events, Pick(keys, frozenset(blocked)))
        if stored is not None:
            return stored
        log.info("contact row %s changed while storing events; resolving again", contact.id)
    # Agents kept deleting the rows picked: a 503 "busy", like any other lost race.
    raise Contention("the contact rows kept disappearing")


def _known_events(events: Sequence[EventInput]) -> dict[tuple, _Stored]:
    """Repeats of events already stored, answered without reconciling anything."""
    existing = _existing_events(db.session.connection(), events)
    db.session.rollback()
    return existing


_BUSY = "too many concurrent changes to this customer; try this event again"
_LATE = "the batch ran out of time before this event; try this event again"
_UNAVAILABLE = "the database did not answer; try this event again"

# A batch starts no customer's events after this many seconds: the rest answer 503, to be
# sent again. gunicorn kills a worker still busy at its timeout (30 s by default), and the
# client then gets a 500 and cannot tell which events were stored. 500 events of 500 new
# customers took 11 s on a MariaDB with its two cores busy; a slow disk's commits take longer.
BATCH_TIME_BUDGET_S = 20.0


def _retry_error(code: str, message: str) -> ApiError:
    """A 503 for one event of a batch: not stored, to be sent again."""
    return ApiError(503, code, message, headers={"Retry-After": "1"})


def record_events(events: Sequence[EventInput]) -> list[Recorded | ApiError]:
    """Store events (a batch or one), answering a Recorded or an ApiError per event, in order.

    Events are grouped by the identifiers they carry, so a burst of page views
    from one visitor costs one identify and one write transaction.
    """
    results: list[Recorded | ApiError | None] = [None] * len(events)
    known = _known_events(events)
    groups: dict[tuple, list[int]] = {}
    # A repeat inside the batch (same channel and externalId as an earlier event)
    # stores nothing, not even its identifiers or name: it answers as that event did.
    first_of: dict[tuple, int] = {}
    repeats: dict[int, int] = {}
    for index, event in enumerate(events):
        pair = (event.channel, event.external_id)
        repeat = known.get(pair) if event.external_id else None
        if repeat is not None:
            results[index] = _repeat_answer(event, repeat)
        elif event.external_id and pair in first_of:
            first = first_of[pair]
            if _Signature.of(events[first]).matches(event):
                repeats[index] = first
            else:
                results[index] = _reused_error()
        else:
            if event.external_id:
                first_of[pair] = index
            groups.setdefault(_key(event), []).append(index)
    stored_any = False
    unavailable: ApiError | None = None
    # Set once a group gave up busy with the batch at it for a lock wait or more.
    out_of_time: ApiError | None = None
    started = time.monotonic()
    budget = current_app.config.get("EVENTS_BATCH_TIME_BUDGET_S", BATCH_TIME_BUDGET_S)
    for position, indexes in enumerate(groups.values()):
        if out_of_time is None and position and time.monotonic() - started >= budget:
            out_of_time = _retry_error("busy", _LATE)
        if unavailable is not None:
            # The database failed for an earlier group: the rest are not tried, so that
            # the answer comes back before a client or gunicorn gives up on it.
            stored = [unavailable] * len(indexes)
        elif out_of_time is not None:
            # A lock held for long (a SQLite write lock, a customer's row): each group
            # left would wait for it in turn, one to two lock waits each, and gunicorn
            # kills the worker at 30 s (a 500, and the client cannot tell what was stored).
            stored = [out_of_time] * len(indexes)
        else:
            try:
                stored = _record_group([events[i] for i in indexes])
                stored_any = True
            except ApiError as exc:
                stored = [exc] * len(indexes)
            except Contention:
                # This group lost its races; the groups stored already stay stored
                # and say so, so a client retries only these events.
                stored = [_retry_error("busy", _BUSY)] * len(indexes)
                if time.monotonic() - started >= retry_window():
                    out_of_time = stored[0]
            except SQLAlchemyError as exc:
                if refuses_a_value(exc):
                    # This group's values, not the database: the other groups go on.
                    log.error("the database refused a value of events: %s", describe(exc))
                    stored = [unstorable_value_error()] * len(indexes)
                elif not stored_any:
                    # Nothing is stored yet: the whole batch answers 503, to be sent again.
                    raise
                else:
                    # Groups are stored already: their results must reach the client, or it
                    # would send them again (events without an externalId would be stored
                    # twice).
                    log.error("database error while storing a batch's events: %s", describe(exc))
                    unavailable = _retry_error("database_unavailable", _UNAVAILABLE)
                    stored = [unavailable] * len(indexes)
        for index, result in zip(indexes, stored, strict=True):
            results[index] = result
    for index, first in repeats.items():
        answer = results[first]
        results[index] = replace(answer, duplicate=True) if isinstance(answer, Recorded) else answer
    return results  # type: ignore[return-value]
