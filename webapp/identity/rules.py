"""The linking rules: how values are normalised and how contact rows join into customers.

Plain functions over plain data; no Flask and no database, so every rule and
invariant is unit-tested on its own (tests/test_rules.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from email_validator import EmailNotValidError, validate_email

from ..text import free_text_problem

EMAIL = "email"
PHONE = "phone"

# An identifier as matching sees it: (kind, normalised key).
Key = tuple[str, str]

MAX_EMAIL_LENGTH = 254
# Generous for formatting characters; the digits themselves are capped below.
MAX_PHONE_LENGTH = 64
MAX_PHONE_DIGITS = 20

# Characters a phone number may be written with that matching ignores.
_PHONE_SEPARATORS = re.compile(r"[\s\-.()\[\]]")
_PHONE_KEY = re.compile(r"\+?[0-9]+")


class InvalidValue(ValueError):
    """A value that cannot be an e-mail address or phone number; the message says why."""


@dataclass(frozen=True)
class Value:
    """An identifier as stored (trimmed, as sent) and the key that matching compares."""

    kind: str
    stored: str
    key: str


def _reject_control_characters(value: str, what: str) -> None:
    # The free-text rule: a phone's separators may be any white space (a
    # no-break space pasted from a web page), but not a tab, a line break or a
    # C1 control, which would be stored as sent.
    problem = free_text_problem(value)
    if problem:
        raise InvalidValue(f"{what} {problem}")


def parse_email(raw: str) -> Value:
    """Validate an e-mail address (syntax only, no DNS) and derive its matching key.

    The key is email-validator's normalised address, lower-cased: the local
    part in Unicode's composed form (NFC), so that "josé" typed with a
    combining accent is the same address as with a precomposed "é", and the
    domain in its Unicode form, so that "xn--bcher-kva.de" is "bücher.de".
    For a plain ASCII address that is the address lower-cased.
    """
    stored = raw.strip()
    if len(stored) > MAX_EMAIL_LENGTH:
        raise InvalidValue(f"email is longer than {MAX_EMAIL_LENGTH} characters")
    _reject_control_characters(stored, "email")
    try:
        validated = validate_email(stored, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidValue(f"not an email address: {exc}") from None
    return Value(EMAIL, stored, composed(validated.normalized.lower()))


def composed(text: str) -> str:
    """``text`` in Unicode's composed normal form (NFC); ASCII text is returned as it is."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def phone_key(raw: str) -> str:
    """Matching key of a phone: separators dropped, a leading + kept. Raises InvalidValue."""
    compact = _PHONE_SEPARATORS.sub("", raw)
    if not any(ch.isdigit() for ch in compact):
        raise InvalidValue("phone number has no digits")
    if not _PHONE_KEY.fullmatch(compact) or not compact.isascii():
        raise InvalidValue(
            "phone number may hold only digits, a leading +, spaces, dashes, dots and brackets"
        )
    if len(compact.lstrip("+")) > MAX_PHONE_DIGITS:
        raise InvalidValue(f"phone number has more than {MAX_PHONE_DIGITS} digits")
    return compact


def parse_phone(raw: str) -> Value:
    """Validate a phone number written any common way and derive its matching key."""
    stored = raw.strip()
    if len(stored) > MAX_PHONE_LENGTH:
        raise InvalidValue(f"phone number is longer than {MAX_PHONE_LENGTH} characters")
    _reject_control_characters(stored, "phone number")
    return Value(PHONE, stored, phone_key(stored))


@dataclass(frozen=True)
class Row:
    """The part of a contact row the rules need."""

    id: int
    email: str | None
    phone: str | None
    email_key: str | None
    phone_key: str | None
    linked_id: int | None
    created_at: datetime

    @property
    def primary_id(self) -> int:
        """The id of the customer (its primary row) this row belongs to."""
        return self.linked_id if self.linked_id is not None else self.id

    @property
    def is_primary(self) -> bool:
        return self.linked_id is None

    def identifiers(self) -> Iterable[tuple[str, str]]:
        """The (kind, key) pairs this row holds."""
        if self.email_key is not None:
            yield EMAIL, self.email_key
        if self.phone_key is not None:
            yield PHONE, self.phone_key


def _age(row: Row) -> tuple[datetime, int]:
    return row.created_at, row.id


@dataclass(frozen=True)
class NewRow:
    """A contact row to insert: a primary when ``linked_id`` is None."""

    email: str | None
    phone: str | None
    email_key: str | None
    phone_key: str | None
    linked_id: int | None


@dataclass
class Plan:
    """What one identify request changes: merges first, then at most one new row."""

    survivor_id: int | None
    # Primaries that become secondaries of the survivor, oldest first.
    absorbed: list[int] = field(default_factory=list)
    new_row: NewRow | None = None

    @property
    def writes(self) -> bool:
        return bool(self.absorbed) or self.new_row is not None


def plan_identify(values: Sequence[Value], rows: Sequence[Row]) -> Plan:
    """Decide what a request with ``values`` does to the customers it touches.

    ``rows`` must hold every live row of every customer that shares a key with
    the request (primaries and their secondaries); rows of other customers are
    ignored. The oldest primary, by
    creation time then id, survives; every other primary is absorbed; one new
    row holding all request values is added only when a value is new.
    """
    if not values:
        raise ValueError("an identify request needs at least one value")
    email = next((v for v in values if v.kind == EMAIL), None)
    phone = next((v for v in values if v.kind == PHONE), None)
    wanted = {(v.kind, v.key) for v in values}
    touched = {row.primary_id for row in rows if wanted & set(row.identifiers())}
    rows = [row for row in rows if row.primary_id in touched]
    missing = orphaned_customers(rows)
    if missing:
        raise OrphanedCustomers(missing)

    if not rows:
        new_row = NewRow(
            email=email.stored if email else None,
            phone=phone.stored if phone else None,
            email_key=email.key if email else None,
            phone_key=phone.key if phone else None,
            linked_id=None,
        )
        return Plan(survivor_id=None, new_row=new_row)

    # Every touched customer's primary is among the rows (checked above).
    ordered = sorted((row for row in rows if row.id in touched), key=_age)
    survivor = ordered[0]
    known = {key for row in rows for key in row.identifiers()}
    plan = Plan(survivor_id=survivor.id, absorbed=[row.id for row in ordered[1:]])
    if any((v.kind, v.key) not in known for v in values):
        plan.new_row = NewRow(
            email=email.stored if email else None,
            phone=phone.stored if phone else None,
            email_key=email.key if email else None,
            phone_key=phone.key if phone else None,
            linked_id=survivor.id,
        )
    return plan


@dataclass(frozen=True)
class Customer:
    """The consolidated answer: one primary and everything linked to it."""

    primary_id: int
    emails: list[str]
    phone_numbers: list[str]
    secondary_ids: list[int]


class OrphanedCustomers(ValueError):
    """Rows name customers whose primary row is not a live primary among them."""

    def __init__(self, customer_ids: list[int]):
        super().__init__(f"rows of customers {customer_ids} are incomplete")
        self.customer_ids = customer_ids


def orphaned_customers(rows: Sequence[Row]) -> list[int]:
    """Customers among ``rows`` whose primary row is not a live primary among them.

    The app never leaves a customer so (deleting a primary promotes another
    row in the same transaction); SQL run on the table by hand can.
    """
    by_id = {row.id: row for row in rows}
    return sorted(
        {
            row.primary_id
            for row in rows
            if row.primary_id not in by_id or not by_id[row.primary_id].is_primary
        }
    )


def joining_time(now: datetime, rows: Iterable[Row], primary_id: int) -> datetime:
    """When a row joining customer ``primary_id`` is stamped: ``now``, never before its rows.

    Another box's clock may run behind the one that wrote the customer; a row
    stamped older than its primary would make the next reconciliation swap the
    primary (and the id the shop knows the customer by).
    """
    return max([now, *(row.created_at for row in rows if row.primary_id == primary_id)])


def consolidate(primary_id: int, rows: Iterable[Row]) -> Customer:
    """Fold a customer's rows into the answer: the primary's values first, each once.

    Values are de-duplicated by key and shown in the form first stored.
    """
    mine = [row for row in rows if row.primary_id == primary_id]
    mine.sort(key=lambda row: (not row.is_primary, row.created_at, row.id))
    if not mine or not mine[0].is_primary or mine[0].id != primary_id:
        raise ValueError(f"no primary row {primary_id} among the rows")
    emails, phones = distinct_values(mine)
    return Customer(
        primary_id=primary_id,
        emails=emails,
        phone_numbers=phones,
        secondary_ids=[row.id for row in mine[1:]],
    )


def distinct_values(rows: Iterable[Row]) -> tuple[list[str], list[str]]:
    """The e-mails and phones of ``rows`` in their order, each once by key, as first stored."""
    emails: dict[str, str] = {}
    phones: dict[str, str] = {}
    for row in rows:
        if row.email_key is not None and row.email is not None:
            emails.setdefault(row.email_key, row.email)
        if row.phone_key is not None and row.phone is not None:
            phones.setdefault(row.phone_key, row.phone)
    return list(emails.values()), list(phones.values())


class Partition:
    """Ids joined into disjoint groups (union-find); each group is named by its smallest id."""

    def __init__(self, ids: Iterable[int]):
        self._parent = {i: i for i in ids}

    def find(self, x: int) -> int:
        """The id naming ``x``'s group."""
        parent = self._parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(self, a: int, b: int) -> None:
        """Put ``a`` and ``b`` (and their groups) in one group."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self._parent[max(root_a, root_b)] = min(root_a, root_b)


def invariant_violations(rows: Sequence[Row], blocked: Collection[Key] = frozenset()) -> list[str]:
    """Everything wrong with a set of live rows, as sentences; empty when all holds.

    The invariants: links are one hop to a live primary, primaries say so, and
    every group of rows connected by a shared key has exactly one primary.
    A ``blocked`` key connects nothing, so customers may share it.
    """
    problems: list[str] = []
    by_id = {row.id: row for row in rows}
    for row in rows:
        if row.linked_id is None:
            continue
        target = by_id.get(row.linked_id)
        if target is None:
            problems.append(f"row {row.id} links to {row.linked_id}, which is not a live row")
        elif not target.is_primary:
            problems.append(f"row {row.id} links to {row.linked_id}, which is a secondary")

    together = Partition(row.id for row in rows)
    owner: dict[tuple[str, str], int] = {}
    for row in rows:
        for key in row.identifiers():
            if key in blocked:
                continue
            if key in owner:
                together.join(row.id, owner[key])
            else:
                owner[key] = row.id
        if row.linked_id is not None and row.linked_id in by_id:
            together.join(row.id, row.linked_id)

    groups: dict[int, set[int]] = {}
    for row in rows:
        groups.setdefault(together.find(row.id), set()).add(row.primary_id)
    for members in groups.values():
        if len(members) > 1:
            problems.append(f"customers {sorted(members)} share a value but were not merged")
    return problems


def parse_key(kind: str, raw: str) -> Value:
    """Parse ``raw`` as a value of ``kind`` ("email" or "phone"). Raises InvalidValue."""
    if kind == EMAIL:
        return parse_email(raw)
    if kind == PHONE:
        return parse_phone(raw)
    raise InvalidValue(f"unknown identifier kind {kind!r}")


def parse_identifier(raw: str) -> Value:
    """An e-mail address or a phone number, told apart by the @. Raises InvalidValue."""
    if not raw.strip():
        raise InvalidValue("enter an email address or a phone number")
    return parse_email(raw) if "@" in raw else parse_phone(raw)


def keys_detail(keys: Iterable[Key]) -> dict[str, list[str]]:
    """Keys grouped by kind, each sorted: a bond's statement as stored, and lookups' bound lists."""
    detail: dict[str, list[str]] = {EMAIL: [], PHONE: []}
    for kind, key in sorted(set(keys)):
        detail[kind].append(key)
    return detail


def connected_groups(
    rows: Sequence[Row],
    blocked: Collection[Key] = frozenset(),
    bonds: Iterable[Collection[Key]] = (),
) -> list[list[Row]]:
    """Who belongs with whom: rows joined by a shared non-blocked key or by a bond.

    A bond is a set of keys that a request or an agent said belong to one person
    (the values of a merging identify request, an agent's link or merge); every
    row holding one of its non-blocked keys joins the others. Existing links
    count for nothing: they are what this recomputes. Each group is sorted
    oldest first (creation time, then id), so its first row is its primary;
    groups come in the order of their primaries.
    """
    together = Partition(row.id for row in rows)
    owner: dict[Key, int] = {}
    for row in rows:
        for key in row.identifiers():
            if key in blocked:
                continue
            if key in owner:
                together.join(row.id, owner[key])
            else:
                owner[key] = row.id
    for bond in bonds:
        held = [owner[key] for key in bond if key in owner and key not in blocked]
        for other in held[1:]:
            together.join(held[0], other)

    groups: dict[int, list[Row]] = {}
    for row in rows:
        groups.setdefault(together.find(row.id), []).append(row)
    ordered = [sorted(group, key=_age) for group in groups.values()]
    ordered.sort(key=lambda group: _age(group[0]))
    return ordered


@dataclass(frozen=True)
class Relink:
    """A row whose link changes: ``after`` None means it becomes a primary."""

    row_id: int
    before: int | None
    after: int | None


@dataclass(frozen=True)
class MergeStep:
    """A customer that reconciliation folds into another one."""

    survivor_id: int
    absorbed_id: int
    rows_moved: int


@dataclass
class Reconciliation:
    """The difference between the rows' current links and who belongs with whom."""

    # Every group's row ids, oldest (its primary) first.
    groups: list[list[int]]
    # Live rows whose link changes.
    relinks: list[Relink] = field(default_factory=list)
    # Soft-deleted rows re-pointed at their customer's live primary (history stays attached).
    deleted_relinks: list[Relink] = field(default_factory=list)
    merges: list[MergeStep] = field(default_factory=list)

    @property
    def promoted(self) -> list[int]:
        """Rows that become primaries (a split, or the primary's row was deleted)."""
        return [r.row_id for r in self.relinks if r.after is None]

    @property
    def changed(self) -> bool:
        return bool(self.relinks or self.deleted_relinks)

    def _touched(self) -> set[int]:
        """Rows whose group changed: the live rows relinked and the primaries that
        deleted rows were relinked to (a repair may change nothing else)."""
        homes = {r.after for r in self.deleted_relinks if r.after is not None}
        return {r.row_id for r in self.relinks} | homes

    def customers_before(
        self, rows: Sequence[Row], involved: Collection[int] = ()
    ) -> dict[int, list[int]]:
        """The customers involved, with the rows they had, as {primary id: row ids}.

        ``rows`` are the live rows as they were before the change (a row the
        change adds is not among them). Involved: the customers in
        ``involved`` and every customer that a changed group (one holding a
        relinked row, or one a deleted row was relinked to) draws a row from,
        the one it merges into included.
        """
        touched = self._touched()
        changed = {
            row_id for group in self.groups if touched.intersection(group) for row_id in group
        }
        owners = set(involved) | {row.primary_id for row in rows if row.id in changed}
        return _by_customer(row for row in rows if row.primary_id in owners)

    def customers_after(
        self, before: Mapping[int, Collection[int]] | None = None
    ) -> dict[int, list[int]]:
        """The customers of the changed groups now, as {primary id: row ids}.

        With ``before`` (``customers_before``), also every customer now holding
        a row of those: what a split customer kept, a customer a row was added
        to, one that did not change.
        """
        wanted = self._touched()
        wanted |= {row_id for ids in (before or {}).values() for row_id in ids}
        return {group[0]: group for group in self.groups if wanted.intersection(group)}


def _by_customer(rows: Iterable[Row]) -> dict[int, list[int]]:
    customers: dict[int, list[int]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        customers.setdefault(row.primary_id, []).append(row.id)
    return dict(sorted(customers.items()))


def reconcile(
    rows: Sequence[Row],
    blocked: Collection[Key] = frozenset(),
    bonds: Iterable[Collection[Key]] = (),
    deleted: Sequence[Row] = (),
) -> Reconciliation:
    """Diff the live ``rows``' links against ``connected_groups`` and say what to change.

    ``rows`` must hold whole customers (every live row of every customer
    involved). Each group's oldest row becomes or stays its primary and every
    other row links to it in one hop. A group that gathers rows of several
    current customers is a merge into the oldest. ``deleted`` rows of these
    customers are re-pointed to where their customer's rows now live, in one
    hop, those SQL chained to other deleted rows included (``_deleted_owners``);
    one of no live customer points at that customer's (deleted) primary, and
    one that is that customer itself (linked to nothing, or by SQL to itself)
    has linkedId NULL.
    """
    groups = connected_groups(rows, blocked, bonds)
    target: dict[int, int | None] = {}
    for group in groups:
        primary = group[0]
        target[primary.id] = None
        for row in group[1:]:
            target[row.id] = primary.id
    result = Reconciliation(groups=[[row.id for row in group] for group in groups])
    for row in sorted(rows, key=lambda r: r.id):
        if row.linked_id != target[row.id]:
            result.relinks.append(Relink(row.id, row.linked_id, target[row.id]))

    by_id = {row.id: row for row in rows}
    for group in groups:
        primary = group[0]
        moved: dict[int, int] = {}
        for row in group:
            moved[row.primary_id] = moved.get(row.primary_id, 0) + 1
        for old, count in sorted(moved.items()):
            was_customer = old in by_id and by_id[old].is_primary
            if old != primary.primary_id and was_customer:
                result.merges.append(MergeStep(primary.id, old, count))

    # Where each old customer's rows went: the new primary of its oldest live row, and
    # of its oldest live row holding each (kind, key).
    new_home: dict[int, int] = {}
    holder_home: dict[tuple[int, str, str], int] = {}
    for row in sorted(rows, key=_age):
        home = row.id if target[row.id] is None else target[row.id]
        new_home.setdefault(row.primary_id, home)
        for key in row.identifiers():
            holder_home.setdefault((row.primary_id, *key), home)
    owners = _deleted_owners(deleted, by_id, new_home)
    for row in sorted(deleted, key=lambda r: r.id):
        owner = owners[row.id]
        home = _deleted_home(row, owner, holder_home, blocked)
        if home is None:
            # No live row names that customer: it stays with it, a deleted primary of
            # its own when it is that customer (linkedId NULL).
            home = new_home.get(owner, owner)
        if home == row.id:
            home = None
        if home != row.linked_id:
            result.deleted_relinks.append(Relink(row.id, row.linked_id, home))
    return result


def _deleted_owners(
    deleted: Sequence[Row], live: Mapping[int, Row], named: Collection[int]
) -> dict[int, int]:
    """The customer (primary id) of each deleted row: that of the row it points at.

    That is the customer of the live row it points at (SQL may have linked it to
    a secondary), or of the deleted row it points at, and so on up a chain of
    deleted rows (SQL may have linked one deleted row to another); else the id it
    points at. A row linked to nothing, or by SQL to itself, is its own. A cycle
    of deleted rows points at nothing either: its customer is the oldest of its
    rows that live rows still name (``named``: it was their primary), else its
    oldest row.
    """
    by_id = {row.id: row for row in deleted}
    owners: dict[int, int] = {}
    for start in deleted:
        path: list[Row] = []
        on_path: dict[int, int] = {}
        row = start
        while True:
            if row.id in owners:
                owner = owners[row.id]
                break
            if row.id in on_path:
                cycle = path[on_path[row.id] :]
                owner = min(cycle, key=lambda r: (r.id not in named, _age(r))).id
                break
            on_path[row.id] = len(path)
            path.append(row)
            link = row.linked_id
            if link is None or link == row.id:
                owner = row.id
                break
            if link in live:
                owner = live[link].primary_id
                break
            if link not in by_id:
                owner = link
                break
            row = by_id[link]
        for walked in path:
            owners[walked.id] = owner
    return owners


def _deleted_home(
    row: Row, owner: int, holder_home: dict[tuple[int, str, str], int], blocked: Collection[Key]
) -> int | None:
    """Where a deleted row goes: with the live rows of its customer ``owner`` that hold its
    e-mail, else its phone (not blocked ones); None when none does.

    Deleting the row that joined two people splits them; what hangs off that
    row (vouchers, history) stays with the one whose address it holds.
    """
    for key in row.identifiers():
        if key not in blocked and (owner, *key) in holder_home:
            return holder_home[(owner, *key)]
    return None
