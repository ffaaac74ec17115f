"""Customer search: any part of an e-mail or phone number, answered from the gram index.

A leading-wildcard LIKE over a million contacts reads the whole table, so
every contact's e-mail key and phone digits are cut into three-character
grams (``contact_gram``, added in the same transaction as the contact). A
search walks the index of its rarest gram, newest contact first, and checks
each candidate row with the real substring test; it stops as soon as it has
one page of customers, so common and rare queries both read few rows.

Extension point for other parts of the app (names, for instance)::

    from webapp.dashboard.search import register_matcher

    def match_names(conn, query, before, limit):
        # contact ids whose customer matches query.text, highest id first,
        # only ids below ``before`` when it is not None, at most ``limit`` of them
        ...

    def name_entries(conn, contact_ids):
        # the (gram, contact id) index entries those rows' names make, for reindex
        ...

    register_matcher("names", match_names, name_entries)

Results of every matcher are merged by contact id, so each must return ids in
descending order; a customer is shown once, at its newest matching row. A
matcher that keeps grams of its own in the index walks it with ``scan``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import idna
from sqlalchemy import (
    Connection,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    union_all,
)

from ..database import write_transaction
from ..extensions import db
from ..identity.rules import Row, composed, consolidate, distinct_values
from ..identity.search_index import (
    GRAM,
    NOT_DIGIT,
    ContactGram,
    add_entries,
    contact_grams,
    grams,
)
from ..identity.service import ROW_COLUMNS, row_from_record
from ..models import MAX_ROW_ID, Contact
from .sections import customer_names

PAGE_SIZE = 20
# Pages "Load more" reaches (500 customers). Each page walks the matches from
# the first, so a deeper one would cost more and more; past this, the agent is
# asked to type more instead.
MAX_SEARCH_PAGES = 25
# Rows each matcher returns per round while a page is being filled.
_SCAN_BATCH = 200
# Index entries counted per gram to find the rarest one. Only when every gram has
# at least that many are the common grams compared, by their entries among the
# newest contacts (where the scan starts): one range read per gram, where counting
# each to a higher cap copied every entry into a derived table on MariaDB.
_RARITY_CAP = 500
_DENSITY_WINDOW = 5000
# Grams besides the rarest that a candidate must also hold in the index.
_EXTRA_GRAMS = 3
# Candidates taken from the index per round trip before their rows are checked; the
# first round takes only as many as the caller wants, since for a dense term (a
# common name) nearly every candidate that holds the extra grams is a match.
_CANDIDATE_CHUNK = 1000
_PHONE_LIKE = re.compile(r"\+?[0-9\s\-.()\[\]]+")

_c = Contact.__table__.c
_g = ContactGram.__table__.c

# (connection, query, before, limit) -> matching contact ids, highest first.
Matcher = Callable[[Connection, "SearchQuery", int | None, int], list[int]]
# (connection, contact ids) -> the (gram, contact id) index entries a matcher reads for them.
IndexEntries = Callable[[Connection, Sequence[int]], Iterable[tuple[str, int]]]


@dataclass(frozen=True)
class SearchQuery:
    """What the agent typed, and the forms it is matched in."""

    text: str
    # Lower-cased, matched inside e-mail keys; None when shorter than a gram.
    email_term: str | None
    # Digits only, matched inside phone keys; None unless it reads as a phone number.
    phone_term: str | None

    @property
    def searchable(self) -> bool:
        """Whether the query is long enough to search (a gram or more)."""
        return self.email_term is not None or self.phone_term is not None


# A whole "xn--" label of a domain: at the start or after "@" or ".", up to "." or the end.
_PUNYCODE_LABEL = re.compile(r"(?:^|(?<=[@.]))xn--[a-z0-9-]+(?=\.|$)")


def _unicode_label(match: re.Match) -> str:
    """A "xn--" label in Unicode by IDNA 2008, as email-validator reads domains.

    One that does not decode (a part of a label, typed so far) stays as typed.
    """
    try:
        return idna.decode(match.group(0))
    except idna.IDNAError:
        return match.group(0)


def parse_query(raw: str) -> SearchQuery:
    """Normalise a search box value: e-mails lower-case, phones without separators."""
    text = " ".join(raw.split())[:320]
    # As e-mail keys are (rules.parse_email): composed, so an accent typed either way
    # matches, and with a domain's "xn--" labels in their Unicode form.
    lowered = _PUNYCODE_LABEL.sub(_unicode_label, composed(text.lower()))
    email_term = lowered if len(lowered) >= GRAM else None
    phone_term = None
    if _PHONE_LIKE.fullmatch(text):
        digits = NOT_DIGIT.sub("", text)
        if digits.startswith("00") and len(digits) - 2 >= GRAM:
            # "00" dials out as "+" does: "00971 50..." is the number stored as "+971 50...",
            # as "00971 50..." or bare. Its digits after the "00" are in all three keys.
            digits = digits[2:]
        phone_term = digits if len(digits) >= GRAM else None
    return SearchQuery(text=text, email_term=email_term, phone_term=phone_term)


def contact_count() -> int:
    """How many contact rows a reindex goes through (for a progress bar)."""
    total = db.session.scalar(select(func.count()).select_from(Contact)) or 0
    db.session.rollback()
    return total


def reindex(batch_size: int = 5000, progress: Callable[[int], None] | None = None) -> int:
    """Rebuild the index entries of every contact, one committed batch at a time.

    Each batch gets its e-mail and phone grams plus the entries of every
    matcher registered with ``index_entries`` (names). Returns how many
    contacts were indexed. Safe to run twice; contacts and names added
    meanwhile are indexed by the write that adds them.
    """

    def rebuild_after(last: int, conn: Connection) -> list[int]:
        batch = conn.execute(
            select(_c.id, _c.email_key, _c.phone_key)
            .where(_c.id > last)
            .order_by(_c.id)
            .limit(batch_size)
        ).all()
        ids = [row.id for row in batch]
        if ids:
            conn.execute(delete(ContactGram.__table__).where(_g.contact_id.in_(ids)))
            entries = {
                (g, row.id) for row in batch for g in contact_grams(row.email_key, row.phone_key)
            }
            for index_entries in _INDEX_ENTRIES.values():
                entries.update(index_entries(conn, ids))
            add_entries(conn, entries)
        db.session.commit()
        return ids

    done = 0
    last = 0
    # A write transaction per batch: reindexing while the service takes traffic.
    while ids := write_transaction(partial(rebuild_after, last)):
        done += len(ids)
        last = ids[-1]
        if progress is not None:
            progress(len(ids))
    return done


def _gram_counts(conn: Connection, grams: Sequence[str], cap: int) -> list[int]:
    """How many index entries each gram has, counting no further than ``cap``; one statement."""
    probes = [
        select(literal(position).label("position"), func.count().label("entries")).select_from(
            select(_g.contact_id).where(_g.gram == gram).limit(cap).subquery()
        )
        for position, gram in enumerate(grams)
    ]
    counts = dict(conn.execute(union_all(*probes)).all())
    return [counts[position] for position in range(len(grams))]


def _recent_density(conn: Connection, grams: Sequence[str]) -> dict[str, int]:
    """Index entries of each gram among the newest ``_DENSITY_WINDOW`` contact ids."""
    newest = conn.execute(select(func.max(_c.id))).scalar() or 0
    rows = conn.execute(
        select(_g.gram, func.count())
        .where(_g.gram.in_(grams), _g.contact_id > newest - _DENSITY_WINDOW)
        .group_by(_g.gram)
    ).all()
    return {gram: 0 for gram in grams} | dict(rows)


def _by_rarity(conn: Connection, grams: Iterable[str]) -> list[str]:
    """The grams, fewest index entries first; common ones by their density among new contacts."""
    ordered = sorted(grams)
    if len(ordered) == 1:
        return ordered
    counts = dict(zip(ordered, _gram_counts(conn, ordered, _RARITY_CAP), strict=True))
    ordered.sort(key=lambda gram: counts[gram])
    if counts[ordered[0]] >= _RARITY_CAP:
        density = _recent_density(conn, ordered)
        ordered.sort(key=lambda gram: density[gram])
    return ordered


def scan(conn: Connection, grams: Iterable[str], test, before: int | None, limit: int) -> list[int]:
    """Live contact ids (highest first, below ``before``) in the rarest gram that pass ``test``.

    ``test`` is a condition on the contact row (on ``Contact`` columns, or an
    EXISTS correlated to it) that does the real substring test. A match holds
    every gram of the term, so candidates are first narrowed in the index
    alone (a few more grams, whose entries sit together), a chunk at a time;
    only then are their contact rows, scattered across the table, read for
    the test. The first chunk is ``limit`` candidates, later ones
    ``_CANDIDATE_CHUNK``: a dense term fills its page from the first chunk
    without reading and testing five times the rows it returns.
    """
    rarest, *others = _by_rarity(conn, grams)
    candidates = select(_g.contact_id).where(_g.gram == rarest).order_by(_g.contact_id.desc())
    for gram in others[:_EXTRA_GRAMS]:
        also = ContactGram.__table__.alias()
        candidates = candidates.where(
            exists().where(also.c.gram == gram, also.c.contact_id == _g.contact_id)
        )
    found: list[int] = []
    size = min(limit, _CANDIDATE_CHUNK)
    while len(found) < limit:
        chunk = candidates if before is None else candidates.where(_g.contact_id < before)
        ids = list(conn.execute(chunk.limit(size)).scalars())
        if not ids:
            break
        found += conn.execute(
            select(_c.id).where(_c.id.in_(ids), _c.deletedAt.is_(None), test).order_by(_c.id.desc())
        ).scalars()
        if len(ids) < size:
            break
        before = ids[-1]
        size = _CANDIDATE_CHUNK
    return found[:limit]


def match_emails(conn: Connection, query: SearchQuery, before: int | None, limit: int) -> list[int]:
    """Contacts whose e-mail key holds the query."""
    if query.email_term is None:
        return []
    test = _c.email_key.contains(query.email_term, autoescape=True)
    return scan(conn, grams("e", query.email_term), test, before, limit)


def match_phones(conn: Connection, query: SearchQuery, before: int | None, limit: int) -> list[int]:
    """Contacts whose phone digits hold the query's digits, whatever the formatting."""
    if query.phone_term is None:
        return []
    test = _c.phone_key.contains(query.phone_term, autoescape=True)
    return scan(conn, grams("p", query.phone_term), test, before, limit)


_MATCHERS: dict[str, Matcher] = {"emails": match_emails, "phones": match_phones}
_INDEX_ENTRIES: dict[str, IndexEntries] = {}


def register_matcher(
    name: str, matcher: Matcher, index_entries: IndexEntries | None = None
) -> None:
    """Let search also find customers by something else (see the module docstring).

    ``index_entries`` gives the grams the matcher reads for a batch of contact
    rows, so that ``reindex`` rebuilds them with the rest.
    """
    _MATCHERS[name] = matcher
    if index_entries is not None:
        _INDEX_ENTRIES[name] = index_entries


@dataclass(frozen=True)
class CustomerSummary:
    """One search result: a customer, not a row."""

    primary_id: int
    emails: list[str]
    phone_numbers: list[str]
    contact_count: int
    first_seen: datetime
    last_seen: datetime
    # The primary row was deleted outside the app: its live rows still point at
    # primary_id (see webapp.dashboard.customers.OrphanedCustomer).
    needs_regrouping: bool = False
    # The display name its page shows (sections.customer_names), if it has one.
    name: str | None = None


@dataclass(frozen=True)
class SearchPage:
    """One page of results and whether another follows."""

    query: SearchQuery
    customers: list[CustomerSummary]
    page: int
    has_more: bool
    # More customers match than the deepest page reaches: the agent should narrow the search.
    capped: bool = False
    # The newest contact id the listing considers: the next pages carry it, so that rows
    # added meanwhile (checkout traffic) neither repeat a customer nor push one out of view.
    upto: int | None = None

    @property
    def first_number(self) -> int:
        """The place of this page's first customer among the results (1 on the first page)."""
        return (self.page - 1) * PAGE_SIZE + 1

    @property
    def most_listed(self) -> int:
        """How many customers a search lists at most."""
        return MAX_SEARCH_PAGES * PAGE_SIZE

    @property
    def next_page_args(self) -> dict[str, str | int | None]:
        """The query arguments of "Load more": the same search's next page, in the same order."""
        return {"q": self.query.text, "page": self.page + 1, "upto": self.upto}


def _matching_customers(
    conn: Connection, query: SearchQuery, wanted: int, upto: int | None = None
) -> tuple[list[int], int | None]:
    """The first ``wanted`` customers (primary ids), ordered by their newest matching row.

    Only contact ids up to ``upto`` count, when given. Also returns the highest
    matching contact id seen, the ``upto`` that keeps later pages in this order.
    """
    customers: list[int] = []
    seen: set[int] = set()
    # Matchers read ids below ``before``; the largest id a row can have still fits once added to.
    before: int | None = None if upto is None else min(upto, MAX_ROW_ID - 1) + 1
    newest: int | None = None
    while len(customers) < wanted:
        found: set[int] = set()
        exhausted = True
        for matcher in _MATCHERS.values():
            ids = matcher(conn, query, before, _SCAN_BATCH)
            exhausted = exhausted and len(ids) < _SCAN_BATCH
            found.update(ids)
        # Only ids above every matcher's last one are certainly in global order.
        ordered = sorted(found, reverse=True)[:_SCAN_BATCH]
        if not ordered:
            break
        if newest is None:
            newest = ordered[0]
        links = dict(conn.execute(select(_c.id, _c.linkedId).where(_c.id.in_(ordered))).all())
        for contact_id in ordered:
            primary = links.get(contact_id) or contact_id
            if primary not in seen:
                seen.add(primary)
                customers.append(primary)
        if exhausted and len(ordered) < _SCAN_BATCH:
            break
        before = ordered[-1]
    return customers[:wanted], newest


def summarise(conn: Connection, primary_ids: Sequence[int]) -> list[CustomerSummary]:
    """Name, emails, phones, size and first and last seen of each customer, in the given order.

    The names of the whole page are read in one more query.
    """
    if not primary_ids:
        return []
    records = conn.execute(
        select(*ROW_COLUMNS).where(
            or_(_c.id.in_(primary_ids), _c.linkedId.in_(primary_ids)),
            _c.deletedAt.is_(None),
        )
    ).all()
    rows: dict[int, list[Row]] = {pid: [] for pid in primary_ids}
    for r in records:
        row = row_from_record(r)
        if row.primary_id in rows:
            rows[row.primary_id].append(row)
    names = customer_names({pid: [row.id for row in mine] for pid, mine in rows.items()}, conn)
    summaries = []
    for pid in primary_ids:
        mine = rows[pid]
        if not mine:
            continue
        orphaned = not any(row.id == pid and row.is_primary for row in mine)
        if orphaned:
            emails, phones = distinct_values(sorted(mine, key=lambda r: (r.created_at, r.id)))
        else:
            customer = consolidate(pid, mine)
            emails, phones = customer.emails, customer.phone_numbers
        summaries.append(
            CustomerSummary(
                primary_id=pid,
                emails=emails,
                phone_numbers=phones,
                contact_count=len(mine),
                first_seen=min(row.created_at for row in mine),
                last_seen=max(row.created_at for row in mine),
                needs_regrouping=orphaned,
                name=names.get(pid),
            )
        )
    return summaries


def search_customers(
    raw: str, page: int = 1, page_size: int = PAGE_SIZE, upto: int | None = None
) -> SearchPage:
    """One page of the customers matching what the agent typed, newest activity first.

    ``upto``: the first page's ``SearchPage.upto``, for the pages after it.
    """
    query = parse_query(raw)
    page = min(max(page, 1), MAX_SEARCH_PAGES)
    if not query.searchable:
        return SearchPage(query=query, customers=[], page=page, has_more=False)
    conn = db.session.connection()
    skip = (page - 1) * page_size
    primaries, newest = _matching_customers(conn, query, skip + page_size + 1, upto)
    shown = primaries[skip : skip + page_size]
    customers = summarise(conn, shown)
    db.session.rollback()
    more = len(primaries) > skip + page_size
    last = page == MAX_SEARCH_PAGES
    return SearchPage(
        query=query,
        customers=customers,
        page=page,
        has_more=more and not last,
        capped=more and last,
        upto=upto if upto is not None else newest,
    )
