"""Screen-pops: an incoming call is a row in the database that every agent's dashboard polls for.

The state lives only in the ``screen_pop`` table, so any gunicorn worker on
any box answers any poll. A quiet poll is two reads through the ``created_at``
index; one with callers ringing also reads their cards, together: a few
statements for them all, however many callers ring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import func, or_, select, update

from ..database import SQLITE_IMMEDIATE, run_write_transaction
from ..extensions import db
from ..identity.rules import PHONE, Row, Value, parse_phone
from ..identity.service import BlockedValues, customer_rows, identify
from ..models import MAX_ROW_ID, utcnow
from .history import (
    CustomerCard,
    Holders,
    customer_cards,
    customers_holding,
    holders_of,
    match_word,
    phone_key_variants,
)
from .models import ANSWERED, CALL, ENDED, Engagement, ScreenPop, call_duration
from .payloads import EventInput
from .service import Pick, Recorded, store_events

log = logging.getLogger(__name__)

# A call older than this no longer pops up: the phone has stopped ringing.
POP_WINDOW = timedelta(seconds=60)
# At most this many calls in one answer: the oldest the cursor has not passed, so
# that a burst of more calls than that reaches the page over the next polls.
MAX_POPS = 20
# Ids are handed out when a pop is inserted, not when it commits: a pop with
# a lower id can become visible after a higher one was served. The cursor
# only moves past pops this old, so a late one is still found; younger pops
# are sent again on each poll, and the page shows each id once.
POP_SETTLE = timedelta(seconds=5)
# The number a pop of a withheld number holds: none (phone_number and phone_key are both
# empty). No contact row's phone key is empty, so it can name no customer.
WITHHELD = ""

# What a pop is to one agent, from what the phone system said and how old the call is;
# docs/engagements.md, "When a pop goes", says what the page does in each. Besides these
# two, ANSWERED (the phone system did not say by whom: the pop says so, and stays) and
# ENDED (the pop goes).
RINGING = "ringing"
# Answered by this agent: their pop stays, marked, until they dismiss it.
YOURS = "yours"
# Answered by another agent: the pop goes.
TAKEN = "taken"
# Older than SCREEN_POP_TIMEOUT_S, and the phone system never said it ended: the pop goes.
STALE = "stale"
POP_STATES = (RINGING, ANSWERED, YOURS, TAKEN, STALE, ENDED)
# At most this many pops a page shows are checked in one poll (a page shows a few).
MAX_SHOWN = 100


def pop_timeout() -> timedelta | None:
    """How long after it rang a call's pop goes by itself (SCREEN_POP_TIMEOUT_S); None: never."""
    seconds = int(current_app.config.get("SCREEN_POP_TIMEOUT_S", 300))
    return timedelta(seconds=seconds) if seconds else None


@dataclass(frozen=True)
class CallState:
    """What is known of a call after it rang: when (and by whom) it was answered, when it
    ended, how long it lasted."""

    rang_at: datetime
    answered_at: datetime | None = None
    # The agent's sign-in e-mail, as agents are stored.
    answered_by: str | None = None
    ended_at: datetime | None = None
    # The phone system's count if it sent one, else from answered to ended; None if unknown.
    duration_seconds: int | None = None

    @classmethod
    def of(cls, row, **changes) -> CallState:
        """The state of a ``screen_pop`` row (an ORM object or a result row), with ``changes``
        to its columns made."""

        def column(name: str):
            return changes[name] if name in changes else getattr(row, name)

        answered_at, ended_at = column("answered_at"), column("ended_at")
        return cls(
            rang_at=column("created_at"),
            answered_at=answered_at,
            answered_by=column("answered_by"),
            ended_at=ended_at,
            duration_seconds=call_duration(answered_at, ended_at, column("duration_seconds")),
        )

    @property
    def status(self) -> str:
        """'ended', 'answered' or 'ringing': the call's own state, the same for everyone."""
        if self.ended_at is not None:
            return ENDED
        return ANSWERED if self.answered_at is not None else RINGING

    def for_agent(self, agent: str | None, now: datetime, timeout: timedelta | None) -> str:
        """One of POP_STATES: what the pop of this call is to ``agent`` (their e-mail) now."""
        if self.ended_at is not None:
            return ENDED
        if self.answered_by is not None:
            return YOURS if self.answered_by == agent else TAKEN
        if timeout is not None and self.rang_at < now - timeout:
            return STALE
        return ANSWERED if self.answered_at is not None else RINGING


@dataclass(frozen=True)
class IncomingCall:
    """What POST /calls/incoming did: the pop, the call event (known callers) and the match."""

    pop_id: int
    event_id: int | None
    customer_ids: list[int]
    # The number is blocked: it names no customer, so no call event was recorded.
    blocked: bool = False
    # The caller withheld the number: nobody is matched, and no call event is recorded.
    withheld: bool = False


@dataclass
class PopView:
    """One pop as the dashboard shows it, resolved against the customers as they are now."""

    id: int
    phone_number: str
    created_at: datetime
    cards: list[CustomerCard] = field(default_factory=list)
    # Agents blocked the number (a switchboard, a shared line): it names no one.
    blocked: bool = False
    # What the pop is to the agent polling (one of POP_STATES), and what is known of the call.
    state: str = RINGING
    call: CallState | None = None

    @property
    def withheld(self) -> bool:
        """The caller withheld the number: there is none to match or to create a customer from."""
        return self.phone_number == WITHHELD

    @property
    def match(self) -> str:
        """'withheld', 'blocked', or 'one', 'several' or 'none': how many customers hold
        the number."""
        if self.withheld:
            return "withheld"
        if self.blocked:
            return "blocked"
        return match_word(len(self.cards))


def _caller_row(customer_id: int, phone: Value) -> Row | None:
    """The oldest live row of the customer that holds the phone, in any prefix form."""
    variants = set(phone_key_variants(phone.key))
    rows = customer_rows(db.session.connection(), customer_id)
    holding = [r for r in rows if r.phone_key in variants]
    return min(holding, key=lambda r: (r.created_at, r.id)) if holding else None


def _store_call(row: Row, event: EventInput, for_pop: int | None = None) -> Recorded | None:
    """File a call against the caller's row; None if the row went or its number was blocked,
    or if an event of another call holds its call id as externalId (it is left unfiled)."""
    stored = store_events(row.id, [event], Pick(((PHONE, row.phone_key),)), for_pop=for_pop)
    return stored[0] if stored and isinstance(stored[0], Recorded) else None


def _call_event(phone: Value, call_id: str | None, occurred_at: datetime) -> EventInput:
    return EventInput(
        channel=CALL,
        direction="inbound",
        values=(phone,),
        occurred_at=occurred_at,
        external_id=call_id,
    )


class CallIdReused(ValueError):
    """A callId that came before with another number: a retry sends the same number."""

    def __init__(self, call_id: str):
        super().__init__(f"callId {call_id!r} came before with another number")
        self.call_id = call_id


def _insert_pop(phone: Value | None, call_id: str | None) -> tuple[int, datetime]:
    """The pop of this call and when the call came: a new pop, or the one a retry of the
    webhook made before (with the first try's time). ``phone`` is None when withheld."""
    db.session.connection(execution_options={SQLITE_IMMEDIATE: True})
    if call_id is not None:
        existing = db.session.execute(
            select(ScreenPop.id, ScreenPop.phone_key, ScreenPop.created_at).where(
                ScreenPop.call_id == call_id
            )
        ).first()
        if existing is not None:
            db.session.rollback()
            same_number = (
                existing.phone_key == WITHHELD
                if phone is None
                else existing.phone_key in phone_key_variants(phone.key)
            )
            if not same_number:
                raise CallIdReused(call_id)
            return existing.id, existing.created_at
    rang_at = utcnow()
    pop = ScreenPop(
        phone_number=WITHHELD if phone is None else phone.stored,
        phone_key=WITHHELD if phone is None else phone.key,
        call_id=call_id,
        created_at=rang_at,
    )
    db.session.add(pop)
    db.session.flush()
    pop_id = pop.id
    db.session.commit()
    return pop_id, rang_at


def record_incoming_call(phone: Value | None, call_id: str | None) -> IncomingCall:
    """Record an inbound call (known callers only) and the pop every dashboard shows.

    An unknown number creates no customer: the pop offers agents to do that.
    A withheld number (``phone`` None) names no one and records no call event:
    the pop only says the number is withheld.
    A webhook retried with the same call id stores one event and one pop; the
    same call id with another number is refused (CallIdReused), before
    anything is stored. The pop comes first, and a known caller's call is
    filed under the pop's row lock, so a retry finds it filed, or files it if
    the caller became known meanwhile.
    """
    if phone is None:
        db.session.rollback()
        pop_id, _ = run_write_transaction(
            lambda: _insert_pop(None, call_id), current_app.config["IDENTIFY_MAX_ATTEMPTS"]
        )
        log.info("incoming call, pop %s: number withheld", pop_id)
        return IncomingCall(pop_id=pop_id, event_id=None, customer_ids=[], withheld=True)
    conn = db.session.connection()
    customer_ids, blocked = customers_holding(conn, phone)
    row = _caller_row(customer_ids[0], phone) if len(customer_ids) == 1 else None
    db.session.rollback()
    pop_id, rang_at = run_write_transaction(
        lambda: _insert_pop(phone, call_id), current_app.config["IDENTIFY_MAX_ATTEMPTS"]
    )
    event_id = None
    if row is not None:
        # A retry files the call at the time it rang (the first try's), as a click on
        # the pop does, not at the time the retry came.
        recorded = _store_call(row, _call_event(phone, call_id, rang_at), pop_id)
        if recorded is not None:
            event_id = recorded.event_id
        else:
            # The caller's row went, or the number was blocked, since the first look:
            # the answer says who holds it now, as the pop will.
            customer_ids, blocked = customers_holding(db.session.connection(), phone)
            db.session.rollback()
    # No number: the logs are no place for customers' phone numbers.
    log.info("incoming call, pop %s: customers %s", pop_id, customer_ids)
    return IncomingCall(
        pop_id=pop_id, event_id=event_id, customer_ids=customer_ids, blocked=blocked
    )


def recent_pops(after: int | None, agent: str | None = None) -> tuple[list[PopView], int]:
    """Calls newer than ``after`` still ringing, newest first, and the cursor to poll with next.

    Without a cursor (a page just opened) every call still ringing shows. An answer holds
    at most ``MAX_POPS`` calls; the rest come with the next polls. A call that ended, or
    that an agent other than ``agent`` (the e-mail of the agent polling) answered, no
    longer rings: it pops up nowhere, and neither does one past its timeout.
    """
    if after is not None and after > (db.session.scalar(select(func.max(ScreenPop.id))) or 0):
        # A cursor past every call: the tab polled another database (restored from a
        # backup, replaced). Kept, it would hide every call until the ids caught up.
        after = None
    now = utcnow()
    timeout = pop_timeout()
    window = POP_WINDOW if timeout is None else min(POP_WINDOW, timeout)
    # Ids of the calls still ringing, through the created_at index: ordered by id alone,
    # a database walks every call since the cursor, and a tab left open overnight
    # holds a cursor a day's calls old.
    ringing = select(ScreenPop.id).where(ScreenPop.created_at >= now - window)
    # Answered by this agent, it still pops up here (marked), for the agent on the call.
    answered_here = ScreenPop.answered_at.is_(None)
    if agent is not None:
        answered_here = or_(answered_here, ScreenPop.answered_by == agent)
    query = select(ScreenPop).where(
        ScreenPop.id.in_(ringing), ScreenPop.ended_at.is_(None), answered_here
    )
    if after is not None:
        query = query.where(ScreenPop.id > after)
    # Oldest first: the cursor below only moves past pops sent. Taken newest first, the
    # calls left out of a burst were older than every one sent, and the cursor passed them.
    pops = list(db.session.scalars(query.order_by(ScreenPop.id).limit(MAX_POPS)))
    pops.reverse()
    settled_before = now - POP_SETTLE
    cursor = max([pop.id for pop in pops if pop.created_at <= settled_before], default=0)
    if len(pops) < MAX_POPS:
        # Every call still ringing above the cursor was sent: the cursor may pass every
        # settled call, the ones that stopped ringing before this poll included.
        latest = db.session.scalar(
            select(ScreenPop.id)
            .where(ScreenPop.created_at <= settled_before)
            .order_by(ScreenPop.created_at.desc())
            .limit(1)
        )
        cursor = max(cursor, latest or 0)
    cursor = max(cursor, after or 0)
    conn = db.session.connection()
    # A withheld number is looked up nowhere: it has no number to match.
    numbered = [pop for pop in pops if pop.phone_key != WITHHELD]
    values = [Value(PHONE, pop.phone_number, pop.phone_key) for pop in numbered]
    holding_of = dict(zip((pop.id for pop in numbered), holders_of(conn, values), strict=True))
    cards = customer_cards(
        conn, [cid for holding in holding_of.values() for cid in holding.customer_ids]
    )
    views = []
    for pop in pops:
        holding = holding_of.get(pop.id, Holders([], blocked=False))
        call = CallState.of(pop)
        views.append(
            PopView(
                id=pop.id,
                phone_number=pop.phone_number,
                created_at=pop.created_at,
                cards=[cards[cid] for cid in holding.customer_ids if cid in cards],
                blocked=holding.blocked,
                state=call.for_agent(agent, now, timeout),
                call=call,
            )
        )
    db.session.rollback()
    return views, cursor


@dataclass(frozen=True)
class PopUpdate:
    """A pop a page shows whose state, for the agent polling, is no longer the one it shows."""

    id: int
    state: str
    call: CallState


def parse_shown(raw: str | None) -> dict[int, str]:
    """The pops a page says it shows, ``12:ringing,13:answered``, as {pop id: state}.

    The page's own script writes it; a part that is not a pop id and one of POP_STATES is
    left out (as a damaged ``after`` is), and so is every part past the first MAX_SHOWN.
    """
    shown: dict[int, str] = {}
    for part in (raw or "").split(",")[:MAX_SHOWN]:
        pop_id, _, state = part.partition(":")
        # isascii: "²".isdigit() holds, but int("²") fails; the length keeps int() cheap.
        if state not in POP_STATES or not (pop_id.isascii() and pop_id.isdigit()):
            continue
        if len(pop_id) <= 19 and int(pop_id) <= MAX_ROW_ID:
            shown[int(pop_id)] = state
    return shown


def pop_updates(shown: dict[int, str], agent: str | None) -> list[PopUpdate]:
    """The pops of ``shown`` ({id: state the page shows}) whose state for ``agent`` is another
    now: answered, ended, past their timeout. One read by primary key. A pop that is not
    found (a database restored) changes nothing: the agent dismisses it.

    A pop the same answer sends whole (younger than POP_SETTLE) is answered here too: the
    page keeps the pop the keyboard is in rather than replacing it, and that one still
    takes the change."""
    ids = sorted(shown)
    if not ids:
        return []
    rows = db.session.execute(
        select(
            ScreenPop.id,
            ScreenPop.created_at,
            ScreenPop.answered_at,
            ScreenPop.answered_by,
            ScreenPop.ended_at,
            ScreenPop.duration_seconds,
        ).where(ScreenPop.id.in_(ids))
    ).all()
    db.session.rollback()
    now, timeout = utcnow(), pop_timeout()
    updates = []
    for row in rows:
        call = CallState.of(row)
        state = call.for_agent(agent, now, timeout)
        if state != shown[row.id]:
            updates.append(PopUpdate(row.id, state, call))
    return sorted(updates, key=lambda update: update.id, reverse=True)


@dataclass(frozen=True)
class CallStatus:
    """What POST /calls/status left: the call's pop, its call event, and what is known of it."""

    pop_id: int
    event_id: int | None
    call: CallState


class CallStatusConflict(ValueError):
    """A status that says otherwise than one before (another agent, another duration)."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("the call's status came before saying otherwise")
        self.fields = fields


def _set_call_status(
    call_id: str, status: str, agent: str | None, duration: int | None
) -> CallStatus | None:
    conn = db.session.connection(execution_options={SQLITE_IMMEDIATE: True})
    # The pop's row lock orders this against an agent filing the call from the pop
    # (create_caller), which reads the call's length under the same lock.
    row = conn.execute(
        select(
            ScreenPop.id,
            ScreenPop.engagement_id,
            ScreenPop.created_at,
            ScreenPop.answered_at,
            ScreenPop.answered_by,
            ScreenPop.ended_at,
            ScreenPop.duration_seconds,
        )
        .where(ScreenPop.call_id == call_id)
        .with_for_update()
    ).first()
    if row is None:
        db.session.rollback()
        return None
    conflicts = {}
    if agent is not None and row.answered_by not in (None, agent):
        conflicts["agent"] = "the call was answered by another agent"
    if duration is not None and row.duration_seconds not in (None, duration):
        conflicts["durationSeconds"] = f"the call's length came before as {row.duration_seconds}"
    if conflicts:
        db.session.rollback()
        raise CallStatusConflict(conflicts)
    now = utcnow()
    changes: dict = {}
    if status == ANSWERED and row.ended_at is None:
        # After its end, an answer (a retry delayed past the hang-up) changes nothing:
        # the time it arrived is not the time the call was answered.
        if row.answered_at is None:
            changes["answered_at"] = now
        if agent is not None and row.answered_by is None:
            changes["answered_by"] = agent
    elif status == ENDED:
        if row.ended_at is None:
            changes["ended_at"] = now
        if duration is not None and row.duration_seconds is None:
            changes["duration_seconds"] = duration
    before = CallState.of(row)
    after = CallState.of(row, **changes)
    if changes:
        conn.execute(update(ScreenPop).where(ScreenPop.id == row.id).values(**changes))
        if row.engagement_id is not None and after.duration_seconds != before.duration_seconds:
            # The call event keeps its length, as a call event posted with durationSeconds
            # does. Events never change otherwise; none of their other writers touch this.
            conn.execute(
                update(Engagement)
                .where(Engagement.id == row.engagement_id)
                .values(duration_seconds=after.duration_seconds)
            )
    db.session.commit()
    return CallStatus(pop_id=row.id, event_id=row.engagement_id, call=after)


def record_call_status(
    call_id: str, status: str, agent: str | None = None, duration: int | None = None
) -> CallStatus | None:
    """Record that the call of ``call_id`` was answered (by ``agent``, an agent's e-mail as
    stored, when the phone system says) or ended (lasting ``duration`` seconds, when it says).

    None when no pop has this call id. Safe to repeat: the first answer's and the first
    end's times are kept, and a repeat fills in only what was not said yet (the agent, the
    duration); one that says otherwise raises CallStatusConflict and changes nothing. An
    answer after the end changes nothing. When the call's length becomes known, its call
    event (a known caller's) holds it as ``duration_seconds``, in the same transaction.
    """
    db.session.rollback()
    recorded = run_write_transaction(
        lambda: _set_call_status(call_id, status, agent, duration),
        current_app.config["IDENTIFY_MAX_ATTEMPTS"],
    )
    if recorded is not None:
        log.info("call %s, pop %s: %s now", status, recorded.pop_id, recorded.call.status)
    return recorded


class WithheldNumber(ValueError):
    """The pop's caller withheld the number: there is none to make a customer of."""


class SeveralCallers(ValueError):
    """The pop's number names several customers now: none is picked, and none is created."""

    def __init__(self, phone: Value, customer_ids: list[int]):
        super().__init__(f"{len(customer_ids)} customers hold this number")
        self.phone = phone
        self.customer_ids = customer_ids


def create_caller(pop_id: int, actor: str) -> int | None:
    """Make the caller of a pop a customer and file the call under it; its primary id.

    None when there is no such pop. Safe to click twice or by two agents: the
    identify rules find the first one's customer, and the call is filed in the
    transaction that links it to the pop, under the pop's row lock, so two
    agents who both saw the call not yet filed store it once.

    The pop may be older than the page's knowledge: a customer who holds the
    number in another prefix form (``+44...`` for a call from ``0044...``) is
    the caller, and a number blocked in any form is refused (BlockedValues), as
    the webhook and the pop match them. Several customers holding it raise
    SeveralCallers: none is picked, and none is created. A withheld number
    raises WithheldNumber.
    """
    pop = db.session.get(ScreenPop, pop_id)
    if pop is None:
        db.session.rollback()
        return None
    if pop.phone_key == WITHHELD:
        db.session.rollback()
        raise WithheldNumber("the caller withheld the number")
    phone = parse_phone(pop.phone_number)
    call_id, occurred_at, had_event = pop.call_id, pop.created_at, pop.engagement_id is not None
    holders = customers_holding(db.session.connection(), phone)
    db.session.rollback()
    if holders.blocked:
        raise BlockedValues([phone])
    if len(holders.customer_ids) > 1:
        raise SeveralCallers(phone, holders.customer_ids)
    if holders.customer_ids:
        primary_id = holders.customer_ids[0]
    else:
        primary_id = identify(
            [phone],
            source="agent",
            actor=actor,
            created_reason="unknown caller, created from the screen-pop",
        ).primary_id
    if not had_event:
        row = _caller_row(primary_id, phone)
        db.session.rollback()
        if row is not None:
            # Filed and linked to the pop in one transaction (not filed if the row
            # went or the number was blocked meanwhile).
            _store_call(row, _call_event(phone, call_id, occurred_at), pop_id)
    return primary_id
