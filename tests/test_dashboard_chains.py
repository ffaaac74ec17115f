"""Why-linked chains: a pure function over rows, no app and no database."""

from dataclasses import astuple

import pytest

from tests.builders import row
from webapp.dashboard.chains import Link, link_chains
from webapp.dashboard.search import parse_query
from webapp.identity.rules import Row
from webapp.identity.search_index import contact_grams


def steps(chain):
    return None if chain is None else [(s.from_id, s.to_id, s.kind, s.value) for s in chain]


@pytest.mark.parametrize(
    "rows, expected",
    [
        # one secondary sharing the phone
        (
            [row(1, "a@x.io", "111"), row(2, "b@x.io", "111", linked_id=1)],
            {2: [(1, 2, "phone", "111")]},
        ),
        # a chain of two hops: 1 -phone- 2 -email- 3
        (
            [
                row(1, "a@x.io", "111"),
                row(2, "b@x.io", "111", linked_id=1),
                row(3, "b@x.io", "222", linked_id=1),
            ],
            {2: [(1, 2, "phone", "111")], 3: [(1, 2, "phone", "111"), (2, 3, "email", "b@x.io")]},
        ),
        # the shortest chain wins over a longer one
        (
            [
                row(1, "a@x.io", "111"),
                row(2, "b@x.io", "111", linked_id=1),
                row(3, "b@x.io", "333", linked_id=1),
                row(4, "a@x.io", "333", linked_id=1),
            ],
            {
                2: [(1, 2, "phone", "111")],
                3: [(1, 2, "phone", "111"), (2, 3, "email", "b@x.io")],
                4: [(1, 4, "email", "a@x.io")],
            },
        ),
        # joined by a manual merge, no shared value
        (
            [row(1, "a@x.io", None), row(2, "z@x.io", "999", linked_id=1)],
            {2: None},
        ),
        # the bridge row is gone (deleted rows are not passed in)
        (
            [
                row(1, "a@x.io", "111"),
                row(3, "b@x.io", "222", linked_id=1),
            ],
            {3: None},
        ),
        # the primary alone
        ([row(1, "a@x.io", "111")], {}),
    ],
)
def test_link_chains(rows, expected):
    assert {k: steps(v) for k, v in link_chains(1, rows).items()} == expected


def test_equal_length_chains_go_through_the_older_row():
    rows = [
        row(1, "a@x.io", "111"),
        row(2, "b@x.io", "111", linked_id=1, minute=10),
        row(3, "c@x.io", "111", linked_id=1, minute=5),
        row(4, "b@x.io", "444", linked_id=1, minute=20),
    ]
    chains = link_chains(1, rows)
    assert chains[4] == [Link(1, 2, "phone", "111"), Link(2, 4, "email", "b@x.io")]


def test_chain_shows_the_value_as_the_linked_row_wrote_it():
    rows = [
        row(1, "Mixed@X.io", None),
        row(2, "mixed@x.io", None, linked_id=1),
    ]
    assert link_chains(1, rows)[2] == [Link(1, 2, "email", "mixed@x.io")]


def test_a_blocked_value_links_no_chain():
    rows = [
        row(1, "a@x.io", "555"),
        row(2, "a@x.io", "666", linked_id=1),
        row(3, "b@x.io", "555", linked_id=1),
        row(4, "c@x.io", "555", linked_id=1),
    ]
    assert link_chains(1, rows)[3] == [Link(1, 3, "phone", "555")]
    chains = link_chains(1, rows, blocked={("phone", "555")})
    assert chains[2] == [Link(1, 2, "email", "a@x.io")]
    # Held only through the blocked phone: no chain of values joins them any more.
    assert chains[3] is None and chains[4] is None


class CountedRow(Row):
    """A Row that counts how often its id is read: the chain search's unit of work."""

    reads = 0

    def __getattribute__(self, name):
        if name == "id":
            CountedRow.reads += 1
        return super().__getattribute__(name)


def _work_of_chains(count: int) -> int:
    """Id reads of link_chains over a customer of ``count`` rows sharing one phone."""
    rows = [
        CountedRow(*astuple(row(n, f"r{n}@x.io", "5550000", linked_id=None if n == 1 else 1)))
        for n in range(1, count + 1)
    ]
    CountedRow.reads = 0
    chains = link_chains(1, rows)
    assert all(steps(chains[n]) == [(1, n, "phone", "5550000")] for n in range(2, count + 1))
    return CountedRow.reads


def test_the_chain_search_follows_each_value_once():
    # Found by hand: 40,000 rows sharing a phone went over that phone's holders from
    # every one of them; the customer page took 37 s and its contacts page 36 s.
    small, large = _work_of_chains(200), _work_of_chains(800)
    # Four times the rows: four times the work, not sixteen.
    assert large < 5 * small, (small, large)


def test_unknown_primary_is_an_error():
    with pytest.raises(ValueError):
        link_chains(9, [row(1, "a@x.io", None)])


@pytest.mark.parametrize(
    "raw, email_term, phone_term",
    [
        ("Lorraine@Hill", "lorraine@hill", None),
        ("  +1 (555) 01-00 ", "+1 (555) 01-00", "15550100"),
        ("555.0100", "555.0100", "5550100"),
        ("ab", None, None),
        ("1-2", "1-2", None),
        ("12 3", "12 3", "123"),
        ("o'brien", "o'brien", None),
        # As e-mail keys are: accents composed, whole xn-- labels in Unicode (IDNA 2008).
        ("Jose\u0301", "jos\u00e9", None),
        ("anna@XN--BCHER-KVA.de", "anna@b\u00fccher.de", None),
        ("a@xn--fa-hia.de", "a@fa\u00df.de", None),
        ("xn--nxasmm1c", "\u03b2\u03cc\u03bb\u03bf\u03c2", None),
        # Part of a label, typed so far, and xn-- in a local part stay as typed.
        ("anna@xn--bcher", "anna@xn--bcher", None),
        ("xn--80ak6aa92e@example.com", "xn--80ak6aa92e@example.com", None),
        ("shopxn--80ak6aa92e", "shopxn--80ak6aa92e", None),
    ],
)
def test_parse_query(raw, email_term, phone_term):
    query = parse_query(raw)
    assert (query.email_term, query.phone_term) == (email_term, phone_term)
    assert query.searchable == (email_term is not None or phone_term is not None)


@pytest.mark.parametrize(
    "email_key, phone_key, grams",
    [
        ("a@b.c", None, {"ea@b", "e@b.", "eb.c"}),
        (None, "+12-34", {"p123", "p234"}),
        ("ab", "12", set()),
        (None, None, set()),
    ],
)
def test_contact_grams(email_key, phone_key, grams):
    assert contact_grams(email_key, phone_key) == grams
