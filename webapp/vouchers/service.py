"""The voucher service: issue, redeem, list and void vouchers, each change in one transaction.

Concurrency design (docs/vouchers.md has the long form):

* A voucher is stored against the contact row its e-mail resolved to; its
  owner is that row's customer *now* (the primary through ``linkedId``), so
  merges, splits and blocks are reflected without touching vouchers.
* Every change (issue, redeem, void) locks the owner's primary Contact row
  FOR UPDATE, as identify does for the rows it adds, re-reading until the
  owner is stable. Merges take the same lock, so "once per customer" is
  checked against a customer that cannot change under the check.
* A redemption is a conditional ``UPDATE ... WHERE used_at IS NULL`` on the
  voucher row, locked after its owner: of any number of concurrent attempts
  exactly one changes the row. On SQLite every write transaction begins
  IMMEDIATE, which serialises writers across processes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from flask import current_app
from sqlalchemy import and_, bindparam, case, func, null, or_, select, union_all, update

from .. import audit
from ..database import SQLITE_IMMEDIATE, Retry, chunks, run_write_transaction
from ..extensions import db
from ..identity.rules import EMAIL, Value
from ..identity.service import (
    BlockedValues,
    blocked_keys,
    identify,
    lock_claims,
    lock_customers,
)
from ..models import Contact, utcnow
from .models import Offer, Voucher
from .rules import (
    EXPIRED,
    USED,
    VALID,
    VOIDED,
    discount_percent,
    format_code,
    iso_utc,
    new_code,
    voucher_status,
)

# Owners to lock in one transaction before giving up on a moving target.
_MAX_LOCK_ROUNDS = 8

# The order a customer's vouchers are shown in: usable ones first.
_STATUS_ORDER = {VALID: 0, USED: 1, EXPIRED: 2, VOIDED: 3}


class VoucherError(Exception):
    """A request the voucher rules refuse; ``status`` and ``code`` say how to answer."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _email_blocked() -> VoucherError:
    return VoucherError(
        422, "email_blocked", "this e-mail is blocked and cannot receive vouchers", "email"
    )


def _not_found() -> VoucherError:
    # One answer for "no such code" and "someone else's code": no hint it exists.
    return VoucherError(404, "voucher_not_found", "no voucher with this code for this customer")


@dataclass(frozen=True)
class VoucherView:
    """A voucher as answers and pages show it."""

    id: int
    code: str
    offer_name: str
    discount: int
    expires_at: datetime
    issued_at: datetime
    issued_by: str
    used_at: datetime | None
    used_email: str | None
    voided_at: datetime | None
    voided_by: str | None
    void_reason: str | None
    status: str
    # The answer to a request already carried out (same Idempotency-Key).
    replayed: bool = False
    # Its offer is once per customer and the owner has redeemed that offer already
    # (set by the reads of a customer's vouchers; see _mark_offers_redeemed).
    offer_redeemed: bool = False

    @property
    def redeemable(self) -> bool:
        """Whether a validation by its owner would succeed now: valid, and not barred
        by a once-per-customer offer the owner has redeemed."""
        return self.status == VALID and not self.offer_redeemed


@dataclass(frozen=True)
class OfferSummary:
    """An offer with how many of its vouchers were issued, used, expired and voided."""

    id: int
    name: str
    discount: int
    once_per_customer: bool
    issued: int
    used: int
    expired: int
    voided: int

    @property
    def valid(self) -> int:
        return self.issued - self.used - self.expired - self.voided


def _view(voucher: Voucher, offer_name: str, now: datetime) -> VoucherView:
    return VoucherView(
        id=voucher.id,
        code=format_code(voucher.code),
        offer_name=offer_name,
        discount=voucher.discount,
        expires_at=voucher.expires_at,
        issued_at=voucher.issued_at,
        issued_by=voucher.issued_by,
        used_at=voucher.used_at,
        used_email=voucher.used_email,
        voided_at=voucher.voided_at,
        voided_by=voucher.voided_by,
        void_reason=voucher.void_reason,
        status=voucher_status(voucher.used_at, voucher.voided_at, voucher.expires_at, now),
    )


def _locked(model, row_id: int):
    """The row ``row_id`` of ``model`` read afresh under a row lock, or None (vouchers and
    offers are never deleted: None only for an id that never was)."""
    return db.session.get(model, row_id, with_for_update=True, populate_existing=True)


def _max_attempts() -> int:
    return current_app.config["IDENTIFY_MAX_ATTEMPTS"]


def _begin_write() -> None:
    """Start the write transaction; on SQLite take the write lock up front."""
    # A read left open earlier in the request (a page that loaded the customer)
    # would keep its connection, and SQLite would not begin IMMEDIATE.
    db.session.rollback()
    db.session.connection(execution_options={SQLITE_IMMEDIATE: True})


def _email_customers(email_key: str) -> set[int]:
    """The live customers (primary ids) holding an e-mail; none for a blocked one."""
    if blocked_keys(db.session.connection(), [(EMAIL, email_key)]):
        return set()
    rows = db.session.execute(
        select(Contact.id, Contact.linkedId).where(
            Contact.email_key == email_key, Contact.deletedAt.is_(None)
        )
    )
    return {linked if linked is not None else cid for cid, linked in rows}


# Contact under other names, for the reads that follow a row's links. Built once: made
# afresh with the ORM's aliased() on every call, _owner's statement cost more to build
# than to run (two thirds of a voucher's issue in the CLI's bulk generation).
_row, _first, _second = (Contact.__table__.alias(name) for name in ("row", "first", "second"))

_OWNER_HOPS = (
    select(
        _row.c.linkedId,
        _row.c.deletedAt,
        _first.c.linkedId,
        _first.c.deletedAt,
        _second.c.linkedId,
        _second.c.deletedAt,
    )
    .select_from(
        _row.outerjoin(_first, _first.c.id == _row.c.linkedId).outerjoin(
            _second, _second.c.id == _first.c.linkedId
        )
    )
    .where(_row.c.id == bindparam("contact_id"))
)


def _owner(contact_id: int) -> int | None:
    """The live customer a contact row belongs to now, or None.

    A live row links straight to its primary. A deleted row keeps the link it
    had, and when its customer is later absorbed by a merge that link points
    at a secondary: one more hop reaches the customer (see _customer_rows).
    """
    found = db.session.execute(_OWNER_HOPS, {"contact_id": contact_id}).first()
    if found is None:
        return None
    chain = [
        (contact_id, found[0], found[1]),
        (found[0], found[2], found[3]),
        (found[2], found[4], found[5]),
    ]
    for candidate, linked, deleted in chain:
        if candidate is None:
            return None
        if linked is None:
            return candidate if deleted is None else None
    return None


def _customer_rows(owners: Sequence[int]):
    """Whether a voucher's contact row belongs to one of ``owners`` (live primaries).

    The row is the primary, links to it, or (a deleted row whose customer was
    absorbed later) links to a row that links to it: the same two hops as _owner.
    """
    members = select(Contact.id).where(or_(Contact.id.in_(owners), Contact.linkedId.in_(owners)))
    return or_(Contact.id.in_(owners), Contact.linkedId.in_(members))


def _lock_owner(contact_id: int) -> int | None:
    """Lock the primary row of the customer ``contact_id`` belongs to and return its id."""

    def read(_held: frozenset[int]):
        owner = _owner(contact_id)
        return owner, () if owner is None else (owner,)

    return lock_customers(db.session.connection(), read)


def _first_row_with_email(email_key: str) -> int | None:
    return db.session.scalar(
        select(Contact.id)
        .where(Contact.email_key == email_key, Contact.deletedAt.is_(None))
        .order_by(Contact.createdAt, Contact.id)
        .limit(1)
    )


def _lock_email_row(email_key: str) -> tuple[int, int]:
    """The oldest live row holding an e-mail and its customer, that customer locked."""
    for _ in range(_MAX_LOCK_ROUNDS):
        contact_id = _first_row_with_email(email_key)
        if contact_id is None:
            raise Retry("the e-mail's contact row went away")
        owner = _lock_owner(contact_id)
        if owner is not None and _first_row_with_email(email_key) == contact_id:
            return contact_id, owner
    raise Retry("the e-mail's customer kept changing while being locked")


def _rows_of_customers(owners: Sequence[int]) -> dict[int, int]:
    """{contact row: its owner} of the rows ``_customer_rows`` takes for ``owners``.

    Read apart from the vouchers, through Contact's indexes only: tested in the
    WHERE of a read joining vouchers to their offers and rows, MariaDB went
    through every voucher of every offer to find a customer's few.
    """
    wanted = set(owners)
    row, link = _row.c, _first.c
    found: dict[int, int] = {}
    for part in chunks(sorted(wanted)):
        own = select(row.id, row.linkedId, null()).where(
            or_(row.id.in_(part), row.linkedId.in_(part))
        )
        # A deleted row whose customer was absorbed later: it links to a secondary.
        absorbed = (
            select(row.id, row.linkedId, link.linkedId)
            .select_from(_row.join(_first, link.id == row.linkedId))
            .where(link.linkedId.in_(part))
        )
        for hops in db.session.execute(union_all(own, absorbed)):
            found[hops[0]] = next(hop for hop in hops if hop in wanted)
    return found


def _vouchers_on_rows(row_ids: Collection[int]) -> list:
    """(Voucher, offer name, once per customer) of every voucher issued to one of the
    contact rows ``row_ids``."""
    found = []
    for part in chunks(sorted(row_ids)):
        found += db.session.execute(
            select(Voucher, Offer.name, Offer.once_per_customer)
            .join(Offer, Offer.id == Voucher.offer_id)
            .where(Voucher.contact_id.in_(part))
        ).all()
    return found


def _offers_redeemed(owner_of: dict[int, int], rows) -> set[tuple[int, int]]:
    """(owner, offer id) of each once-per-customer offer the owner has redeemed, among the
    offers of its unused vouchers: the test ``_customer_redeemed`` makes, for many at once.

    ``owner_of`` is ``_rows_of_customers``' answer and ``rows`` the vouchers on those rows.
    A redemption of a voucher on the owner's rows is in ``rows`` already; one made with
    an e-mail of the owner is read by (offer, e-mail), on the index of both: two more
    statements at most, however many vouchers the customers hold.
    """
    wanted = {
        (owner_of[voucher.contact_id], voucher.offer_id)
        for voucher, _name, once in rows
        if once and voucher.used_at is None and voucher.voided_at is None
    }
    if not wanted:
        return set()
    found = {
        (owner_of[voucher.contact_id], voucher.offer_id)
        for voucher, _name, _once in rows
        if voucher.used_at is not None
    } & wanted
    owners = sorted({owner for owner, _offer in wanted})
    email_owners: dict[str, set[int]] = {}
    for part in chunks(owners):
        held = db.session.execute(
            select(Contact.id, Contact.linkedId, Contact.email_key).where(
                or_(Contact.id.in_(part), Contact.linkedId.in_(part)),
                Contact.deletedAt.is_(None),
                Contact.email_key.is_not(None),
            )
        )
        for cid, linked, email_key in held:
            email_owners.setdefault(email_key, set()).add(cid if linked is None else linked)
    offers = sorted({offer for _owner, offer in wanted})
    for offer_part in chunks(offers):
        for email_part in chunks(sorted(email_owners)):
            redeemed = db.session.execute(
                select(Voucher.offer_id, Voucher.used_email_key).where(
                    Voucher.offer_id.in_(offer_part), Voucher.used_email_key.in_(email_part)
                )
            )
            for offer_id, email_key in redeemed:
                found |= {(owner, offer_id) for owner in email_owners[email_key]} & wanted
    return found


def _views_of_customers(owners: Sequence[int], now: datetime) -> dict[int, list[VoucherView]]:
    """Each of ``owners``' vouchers as views (unsorted), ``offer_redeemed`` set."""
    found: dict[int, list[VoucherView]] = {owner: [] for owner in owners}
    if not found:
        return {}
    owner_of = _rows_of_customers(list(found))
    rows = _vouchers_on_rows(owner_of)
    redeemed = _offers_redeemed(owner_of, rows)
    for voucher, name, _once in rows:
        owner = owner_of[voucher.contact_id]
        view = _view(voucher, name, now)
        if (owner, voucher.offer_id) in redeemed:
            view = replace(view, offer_redeemed=True)
        found[owner].append(view)
    return found


_EPOCH = datetime(1970, 1, 1)


def _seconds(moment: datetime) -> float:
    """Seconds since 1970 of a naive UTC time.

    Not ``datetime.timestamp()``, which reads a naive time as local time: east
    of UTC, an expiry late on 9999-12-31 would fall in the year 10000 and raise.
    """
    return (moment - _EPOCH).total_seconds()


def _sorted_views(views: list[VoucherView]) -> list[VoucherView]:
    def order(view: VoucherView):
        rank = _STATUS_ORDER[view.status]
        # Valid: soonest expiry first; the rest: most recent event first.
        if view.status == VALID:
            return (rank, _seconds(view.expires_at), view.id)
        moment = view.used_at or view.voided_at or view.expires_at
        return (rank, -_seconds(moment), -view.id)

    return sorted(views, key=order)


def _offer_for_issue(name: str, discount: int, once_per_customer: bool | None) -> Offer:
    """The offer called ``name``, locked, created or given its new current discount."""
    offer = db.session.scalars(select(Offer).where(Offer.name == name).with_for_update()).first()
    if offer is None:
        # Two first issues of one name collide on its unique key; the loser runs again.
        offer = Offer(name=name, discount=discount, once_per_customer=bool(once_per_customer))
        db.session.add(offer)
        db.session.flush()
        return offer
    # The new discount applies from now on; issued vouchers keep their own copy.
    offer.discount = discount
    if once_per_customer is not None:
        offer.once_per_customer = once_per_customer
    return offer


def _insert_voucher(
    offer: Offer,
    contact_id: int,
    expires_at: datetime,
    issued_by: str,
    now: datetime,
    issue_key: str | None = None,
) -> Voucher:
    # A code already taken violates the unique key; run_write_transaction
    # rolls back and the next attempt draws a new code.
    voucher = Voucher(
        code=new_code(),
        offer_id=offer.id,
        contact_id=contact_id,
        discount=offer.discount,
        expires_at=expires_at,
        issued_at=now,
        issued_by=issued_by,
        issue_key=issue_key,
    )
    db.session.add(voucher)
    db.session.flush()
    return voucher


def replay_of_issue(
    key: str, email: Value, offer_name: str, discount: int, expires_at: datetime
) -> VoucherView | None:
    """The voucher an earlier request with this Idempotency-Key issued, if it asked the same.

    None when no voucher holds the key; VoucherError (422) when the earlier
    request asked for another voucher.
    """
    try:
        found = db.session.execute(
            select(Voucher, Offer.name, Contact.email_key)
            .join(Offer, Offer.id == Voucher.offer_id)
            .join(Contact, Contact.id == Voucher.contact_id)
            .where(Voucher.issue_key == key)
        ).first()
        if found is None:
            return None
        voucher, name, email_key = found
        if (email_key, name, voucher.discount, voucher.expires_at) != (
            email.key,
            offer_name,
            discount,
            expires_at,
        ):
            raise VoucherError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was sent with another request; use a new key",
            )
        return replace(_view(voucher, name, utcnow()), replayed=True)
    finally:
        db.session.rollback()


def issue_voucher(
    email: Value,
    offer_name: str,
    discount: int,
    expires_at: datetime,
    *,
    once_per_customer: bool | None = None,
    issued_by: str = "api",
    idempotency_key: str | None = None,
) -> VoucherView:
    """Identify ``email`` (a new one becomes a customer) and issue it a voucher of the offer.

    With ``idempotency_key``, a request sent again (a retry after a lost
    answer) gets the voucher the first one issued, marked ``replayed``; the
    key used for a different voucher is refused (422).
    """

    def work() -> VoucherView:
        if idempotency_key is not None:
            issued = replay_of_issue(idempotency_key, email, offer_name, discount, expires_at)
            if issued is not None:
                return issued
        try:
            identify([email], source="voucher")
        except BlockedValues:
            # A shared value such as test@test.com belongs to no one customer.
            raise _email_blocked() from None
        _begin_write()
        # Read again under the e-mail's claim lock, which a block takes too: an
        # agent may have blocked it since identify looked.
        if lock_claims(db.session.connection(), [email]):
            raise _email_blocked()
        now = utcnow()
        offer = _offer_for_issue(offer_name, discount, once_per_customer)
        contact_id, _owner_id = _lock_email_row(email.key)
        # Two copies of one request racing: the second insert breaks the unique
        # key, and its retry finds the first one's voucher above.
        voucher = _insert_voucher(offer, contact_id, expires_at, issued_by, now, idempotency_key)
        view = _view(voucher, offer.name, now)
        db.session.commit()
        return view

    return run_write_transaction(work, _max_attempts())


def issue_to_customer(
    customer_id: int,
    offer_name: str,
    discount: int,
    expires_at: datetime,
    *,
    actor: str,
    once_per_customer: bool | None = None,
) -> VoucherView:
    """Issue a voucher to a customer by its primary id (an agent's action, audit-logged)."""

    def work() -> VoucherView:
        _begin_write()
        now = utcnow()
        offer = _offer_for_issue(offer_name, discount, once_per_customer)
        owner = _lock_owner(customer_id)
        if owner is None:
            raise VoucherError(404, "customer_not_found", "this customer no longer exists")
        voucher = _insert_voucher(offer, customer_id, expires_at, actor, now)
        view = _view(voucher, offer.name, now)
        audit.record(
            actor,
            "issue_voucher",
            customer_id=owner,
            subject=f"voucher {view.code}",
            # The percent, as agents typed it; the column holds hundredths (12.5 % is 1250).
            after={
                "offer": offer.name,
                "discount": discount_percent(voucher.discount),
                "expires_at": expires_at,
            },
        )
        db.session.commit()
        return view

    return run_write_transaction(work, _max_attempts())


def _refuse_unusable(voucher: Voucher, now: datetime) -> None:
    """Raise the error a redemption of ``voucher`` gets, if it cannot be redeemed now."""
    status = voucher_status(voucher.used_at, voucher.voided_at, voucher.expires_at, now)
    if status == VOIDED:
        raise VoucherError(410, "voucher_voided", "this voucher was withdrawn", "code")
    if status == USED:
        when = iso_utc(voucher.used_at)
        raise VoucherError(409, "voucher_used", f"this voucher was already used at {when}", "code")
    if status == EXPIRED:
        when = iso_utc(voucher.expires_at)
        raise VoucherError(410, "voucher_expired", f"this voucher expired at {when}", "code")


def _customer_redeemed(offer_id: int, owner: int) -> bool:
    """Whether the customer has redeemed a voucher of the offer.

    A voucher counts when it was issued to one of the customer's rows, or
    redeemed with one of its e-mails: after a split, the one who redeemed
    another's voucher (while they were one customer) has used the offer too.
    """
    issued = db.session.scalar(
        select(Voucher.id)
        .join(Contact, Contact.id == Voucher.contact_id)
        .where(
            Voucher.offer_id == offer_id,
            Voucher.used_at.is_not(None),
            _customer_rows([owner]),
        )
        .limit(1)
    )
    if issued is not None:
        return True
    emails = (
        select(Contact.email_key)
        .where(or_(Contact.id == owner, Contact.linkedId == owner))
        .where(Contact.deletedAt.is_(None), Contact.email_key.is_not(None))
    )
    redeemed = db.session.scalar(
        select(Voucher.id)
        .where(Voucher.offer_id == offer_id, Voucher.used_email_key.in_(emails))
        .limit(1)
    )
    return redeemed is not None


def _check_redeemable(voucher: Voucher, owner: int, now: datetime) -> Offer:
    _refuse_unusable(voucher, now)
    offer = db.session.get(Offer, voucher.offer_id)
    if offer.once_per_customer and _customer_redeemed(offer.id, owner):
        raise VoucherError(
            409,
            "offer_already_redeemed",
            "this customer has already redeemed this offer, which is once per customer",
            "code",
        )
    return offer


def _voucher_by_code(code: str) -> Voucher | None:
    return db.session.scalars(select(Voucher).where(Voucher.code == code)).first()


def redeem(
    code: str, email: Value, *, dry_run: bool = False, idempotency_key: str | None = None
) -> VoucherView:
    """Redeem a voucher (canonical ``code``) for the customer holding ``email``.

    With ``dry_run`` nothing is written: the answer is what a redemption would
    give now. Raises VoucherError for anything that cannot be redeemed.
    """
    if dry_run:
        try:
            voucher = _voucher_by_code(code)
            owner = None if voucher is None else _owner(voucher.contact_id)
            if owner is None or owner not in _email_customers(email.key):
                raise _not_found()
            now = utcnow()
            offer = _check_redeemable(voucher, owner, now)
            return _view(voucher, offer.name, now)
        finally:
            db.session.rollback()
    return run_write_transaction(
        lambda: _redeem_locked(code, email, idempotency_key), _max_attempts()
    )


def _redeem_locked(code: str, email: Value, idempotency_key: str | None) -> VoucherView:
    _begin_write()
    found = _voucher_by_code(code)
    owner = None if found is None else _lock_owner(found.contact_id)
    if owner is None or owner not in _email_customers(email.key):
        raise _not_found()
    # Re-read under the owner's lock: a concurrent redemption may have committed.
    voucher = _locked(Voucher, found.id)
    now = utcnow()
    if (
        idempotency_key is not None
        and voucher.redeem_key == idempotency_key
        and voucher.used_email_key == email.key
    ):
        # This very redemption, sent again: its answer, not a 409.
        offer_name = db.session.get(Offer, voucher.offer_id).name
        view = replace(_view(voucher, offer_name, now), replayed=True)
        db.session.rollback()
        return view
    offer = _check_redeemable(voucher, owner, now)
    claimed = db.session.execute(
        update(Voucher)
        .where(Voucher.id == voucher.id, Voucher.used_at.is_(None), Voucher.voided_at.is_(None))
        .values(
            used_at=now,
            used_email=email.stored,
            used_email_key=email.key,
            redeem_key=idempotency_key,
        )
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        # Only a writer that skipped the owner's lock gets here; read it all again.
        raise Retry("the voucher changed while being redeemed")
    view = replace(
        _view(voucher, offer.name, now), used_at=now, used_email=email.stored, status=USED
    )
    db.session.commit()
    return view


def list_for_email(email: Value, status: str) -> list[VoucherView]:
    """The vouchers of the customer holding ``email`` with that status (``all`` for every one)."""
    try:
        owners = sorted(_email_customers(email.key))
        if not owners:
            return []
        by_owner = _views_of_customers(owners, utcnow())
        views = _sorted_views([view for views in by_owner.values() for view in views])
    finally:
        db.session.rollback()
    return [v for v in views if status == "all" or v.status == status]


def customer_vouchers(customer_id: int) -> list[VoucherView]:
    """Every voucher of a customer (its primary id): valid first, then used, expired, voided.

    Read inside the caller's transaction (a page or a card being built).
    """
    return _sorted_views(_views_of_customers([customer_id], utcnow())[customer_id])


def vouchers_of_customers(owners: Sequence[int]) -> dict[int, list[VoucherView]]:
    """``customer_vouchers`` of many customers (primary ids) in one read; none left out.

    Each voucher goes to the owner its row reaches in at most two hops, as
    ``_customer_rows`` finds it.
    """
    found = _views_of_customers(owners, utcnow())
    return {owner: _sorted_views(views) for owner, views in found.items()}


def void_voucher(
    voucher_id: int, reason: str, *, actor: str, customer_id: int | None = None
) -> VoucherView:
    """Withdraw an unused voucher with a reason (audit-logged); a used one cannot be voided.

    With ``customer_id``, only a voucher of that customer (its primary id) is found.
    """

    def work() -> VoucherView:
        _begin_write()
        found = db.session.get(Voucher, voucher_id)
        owner = None if found is None else _lock_owner(found.contact_id)
        if owner is None or customer_id not in (None, owner):
            raise VoucherError(404, "voucher_not_found", "this customer has no such voucher")
        voucher = _locked(Voucher, voucher_id)
        if voucher.used_at is not None or voucher.voided_at is not None:
            raise VoucherError(
                409, "voucher_not_voidable", "only a voucher not yet used or voided can be voided"
            )
        now = utcnow()
        offer = db.session.get(Offer, voucher.offer_id)
        before = _view(voucher, offer.name, now)
        voucher.voided_at = now
        voucher.voided_by = actor
        voucher.void_reason = reason
        audit.record(
            actor,
            "void_voucher",
            customer_id=owner,
            subject=f"voucher {before.code}",
            reason=reason,
            before={"status": before.status},
            after={"status": VOIDED},
        )
        db.session.flush()
        view = _view(voucher, offer.name, now)
        db.session.commit()
        return view

    return run_write_transaction(work, _max_attempts())


# Offers per page of the offers page.
OFFERS_PAGE_SIZE = 50


@dataclass(frozen=True)
class OffersPage:
    """A page of offers by name with their counts, and where it sits among them all."""

    offers: list[OfferSummary]
    page: int
    total: int
    page_size: int

    @property
    def first_row(self) -> int:
        return (self.page - 1) * self.page_size + 1

    @property
    def next_page(self) -> int | None:
        return self.page + 1 if self.page * self.page_size < self.total else None

    @property
    def previous_page(self) -> int | None:
        return self.page - 1 if self.page > 1 else None


ONCE_PER_CUSTOMER = "once per customer"
ANY_NUMBER = "any number of times"


def set_redeemable(offer_id: int, once_per_customer: bool, *, actor: str) -> bool:
    """Make an offer redeemable once per customer, or any number of times, from now on
    (audit-logged); whether it changed. Vouchers already used stay used.

    The dashboard's issue form can only turn the rule on (its box left empty keeps
    the offer as it is): this is how an agent turns it off.
    """

    def work() -> bool:
        _begin_write()
        offer = _locked(Offer, offer_id)
        if offer is None:
            raise VoucherError(404, "offer_not_found", "there is no such offer")
        if offer.once_per_customer == once_per_customer:
            db.session.rollback()
            return False
        offer.once_per_customer = once_per_customer
        audit.record(
            actor,
            "offer_redeemable",
            subject=f"offer {offer.name}",
            before={"redeemable": ANY_NUMBER if once_per_customer else ONCE_PER_CUSTOMER},
            after={"redeemable": ONCE_PER_CUSTOMER if once_per_customer else ANY_NUMBER},
        )
        db.session.commit()
        return True

    return run_write_transaction(work, _max_attempts())


def offer_summaries(page: int = 1, page_size: int = OFFERS_PAGE_SIZE) -> OffersPage:
    """A page of offers, by name, with their voucher counts by status.

    Only the page's offers are counted, through the voucher's ``offer_id``
    index: counting every offer's vouchers read the whole voucher table
    (300,000 vouchers: 0.3 s on SQLite, 0.15 s on MariaDB).
    """
    now = utcnow()
    unused = and_(Voucher.used_at.is_(None), Voucher.voided_at.is_(None))

    def count_where(condition):
        return func.sum(case((condition, 1), else_=0))

    try:
        total = db.session.scalar(select(func.count()).select_from(Offer))
        offers = db.session.execute(
            select(Offer.id, Offer.name, Offer.discount, Offer.once_per_customer)
            .order_by(Offer.name)
            .limit(page_size)
            .offset((page - 1) * page_size)
        ).all()
        counts = {}
        if offers:
            counted = db.session.execute(
                select(
                    Voucher.offer_id,
                    func.count(Voucher.id),
                    count_where(Voucher.used_at.is_not(None)),
                    count_where(and_(unused, Voucher.expires_at <= now)),
                    count_where(and_(Voucher.used_at.is_(None), Voucher.voided_at.is_not(None))),
                )
                .where(Voucher.offer_id.in_([offer.id for offer in offers]))
                .group_by(Voucher.offer_id)
            )
            counts = {offer_id: numbers for offer_id, *numbers in counted}
    finally:
        db.session.rollback()
    summaries = []
    for offer_id, name, discount, once_per_customer in offers:
        # An offer without vouchers has no counts row: every count is 0.
        issued, used, expired, voided = (int(n or 0) for n in counts.get(offer_id, (0,) * 4))
        summaries.append(
            OfferSummary(
                id=offer_id,
                name=name,
                discount=discount,
                once_per_customer=once_per_customer,
                issued=issued,
                used=used,
                expired=expired,
                voided=voided,
            )
        )
    return OffersPage(summaries, page, total, page_size)


@dataclass(frozen=True)
class OfferChoice:
    """An offer as the issue form proposes it: its name and current terms."""

    name: str
    discount: int
    once_per_customer: bool


def offer_choices() -> list[OfferChoice]:
    """Every offer by name, without counting its vouchers (the issue form's list).

    Read inside the caller's transaction (the customer page being built).
    """
    rows = db.session.execute(
        select(Offer.name, Offer.discount, Offer.once_per_customer).order_by(Offer.name)
    )
    return [OfferChoice(*row) for row in rows]
