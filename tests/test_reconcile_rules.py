"""Reconciliation rules on their own: who belongs with whom, and the diff to get there (no app)."""

import random
from dataclasses import replace

import pytest

from tests.builders import row
from webapp.identity.rules import (
    EMAIL,
    PHONE,
    InvalidValue,
    MergeStep,
    Relink,
    connected_groups,
    invariant_violations,
    keys_detail,
    parse_identifier,
    reconcile,
)

SHOP = (PHONE, "555")


def ids(groups):
    return [[r.id for r in group] for group in groups]


def applied(rows, plan):
    """The rows with the plan's links written, as the service writes them."""
    after = {r.row_id: r.after for r in plan.relinks}
    return [replace(r, linked_id=after.get(r.id, r.linked_id)) for r in rows]


@pytest.mark.parametrize(
    ("rows", "blocked", "bonds", "expected"),
    [
        pytest.param([row(1, "a@x.io"), row(2, "a@x.io")], (), (), [[1, 2]], id="shared-email"),
        pytest.param(
            [row(1, "a@x.io", "555"), row(2, "b@x.io", "555")], (), (), [[1, 2]], id="shared-phone"
        ),
        pytest.param(
            [row(1, "a@x.io", "555"), row(2, "b@x.io", "555", linked_id=1)],
            [SHOP],
            (),
            [[1], [2]],
            id="split-after-block",
        ),
        pytest.param(
            [
                row(1, "a@x.io", "1"),
                row(2, "b@x.io", "1"),
                row(3, "b@x.io", "2"),
                row(4, "c@x.io", "2"),
            ],
            (),
            (),
            [[1, 2, 3, 4]],
            id="chain",
        ),
        pytest.param(
            [
                row(1, "a@x.io", "1"),
                row(2, "b@x.io", "1"),
                row(3, "b@x.io", "2"),
                row(4, "c@x.io", "2"),
            ],
            [(EMAIL, "b@x.io")],
            (),
            [[1, 2], [3, 4]],
            id="chain-cut-in-the-middle",
        ),
        pytest.param(
            [row(1, "a@x.io"), row(2, phone="9")],
            (),
            [{(EMAIL, "a@x.io"), (PHONE, "9")}],
            [[1, 2]],
            id="bond-joins-rows-sharing-nothing",
        ),
        pytest.param(
            [row(1, "a@x.io"), row(2, phone="9")],
            [(PHONE, "9")],
            [{(EMAIL, "a@x.io"), (PHONE, "9")}],
            [[1], [2]],
            id="bond-through-a-blocked-value-holds-nothing",
        ),
        pytest.param(
            [row(1, "a@x.io"), row(2, phone="9")],
            (),
            [{(EMAIL, "zz@x.io"), (PHONE, "9")}],
            [[1], [2]],
            id="bond-about-other-values",
        ),
        pytest.param(
            [row(1, "a@x.io", minute=9), row(2, "a@x.io", minute=1), row(3, "b@x.io", minute=5)],
            (),
            (),
            [[2, 1], [3]],
            id="oldest-by-creation-time-first",
        ),
        pytest.param(
            [row(2, "a@x.io", minute=1), row(1, "a@x.io", minute=1)],
            (),
            (),
            [[1, 2]],
            id="same-time-lower-id-first",
        ),
        pytest.param([], (), (), [], id="nothing"),
    ],
)
def test_connected_groups(rows, blocked, bonds, expected):
    assert ids(connected_groups(rows, set(blocked), bonds)) == expected


@pytest.mark.parametrize(
    ("rows", "blocked", "relinks", "merges"),
    [
        pytest.param(
            [row(1, "a@x.io", "1"), row(2, "b@x.io", "1", linked_id=1)],
            (),
            [],
            [],
            id="consistent-customer-unchanged",
        ),
        pytest.param(
            [row(1, "a@x.io", "555"), row(2, "b@x.io", "555", linked_id=1)],
            [SHOP],
            [Relink(2, 1, None)],
            [],
            id="block-splits-secondary-off",
        ),
        pytest.param(
            [row(1, "a@x.io", "555"), row(2, "b@x.io", "555")],
            (),
            [Relink(2, None, 1)],
            [MergeStep(1, 2, 1)],
            id="unblock-merges-into-the-older",
        ),
        pytest.param(
            [
                row(1, "a@x.io", "1"),
                row(2, "b@x.io", "2"),
                row(3, "b@x.io", "1", linked_id=2),
                row(4, "c@x.io", "2", linked_id=2),
            ],
            (),
            [Relink(2, None, 1), Relink(3, 2, 1), Relink(4, 2, 1)],
            [MergeStep(1, 2, 3)],
            id="absorbed-customers-secondaries-move-in-one-hop",
        ),
        pytest.param(
            [
                row(1, "a@x.io", "1"),
                row(2, "a@x.io", "2", linked_id=1),
                row(3, "b@x.io", "2", linked_id=1),
            ],
            [(EMAIL, "a@x.io")],
            [Relink(2, 1, None), Relink(3, 1, 2)],
            [],
            id="chain-split-promotes-the-oldest-of-the-rest",
        ),
        pytest.param(
            [row(1, "a@x.io"), row(2, "a@x.io", linked_id=1), row(3, "a@x.io", linked_id=2)],
            (),
            [Relink(3, 2, 1)],
            [],
            id="two-hop-link-fixed",
        ),
        pytest.param(
            [row(5, "a@x.io", minute=0, linked_id=6), row(6, "a@x.io", minute=3)],
            (),
            [Relink(5, 6, None), Relink(6, None, 5)],
            [],
            id="older-secondary-becomes-primary",
        ),
        pytest.param(
            [row(1, "a@x.io", "555"), row(2, "b@x.io", "555", linked_id=1), row(3, "c@x.io")],
            [SHOP],
            [Relink(2, 1, None)],
            [],
            id="unrelated-primary-untouched",
        ),
    ],
)
def test_reconcile_diff(rows, blocked, relinks, merges):
    plan = reconcile(rows, set(blocked))
    assert plan.relinks == relinks
    assert plan.merges == merges
    assert plan.promoted == [r.row_id for r in relinks if r.after is None]
    assert invariant_violations(applied(rows, plan), set(blocked)) == []


def test_deleting_the_primary_makes_the_next_oldest_primary_and_keeps_history_attached():
    deleted = row(1, "a@x.io", "1")
    live = [row(2, "a@x.io", "2", linked_id=1), row(3, "b@x.io", "2", linked_id=1)]
    plan = reconcile(live, deleted=[deleted])
    assert plan.relinks == [Relink(2, 1, None), Relink(3, 1, 2)]
    assert plan.deleted_relinks == [Relink(1, None, 2)]
    assert plan.merges == []


def test_deleting_the_only_bridge_splits_the_customer():
    bridge = row(2, "a@x.io", "9", linked_id=1)
    live = [row(1, "a@x.io", "1"), row(3, "c@x.io", "9", linked_id=1)]
    plan = reconcile(live, deleted=[bridge])
    assert plan.relinks == [Relink(3, 1, None)]
    assert plan.promoted == [3]
    assert plan.deleted_relinks == []


def test_a_deleted_row_that_joined_two_people_stays_with_the_one_holding_its_address():
    # x@ and y@ were one customer only through the primary row, now deleted.
    deleted = row(1, "x@x.io", "111")
    live = [row(2, "y@x.io", "111", linked_id=1), row(3, "x@x.io", "333", linked_id=1)]
    plan = reconcile(live, deleted=[deleted])
    assert plan.groups == [[2], [3]]
    # Not to row 2, the oldest live row: row 3 holds its e-mail.
    assert plan.deleted_relinks == [Relink(1, None, 3)]
    # With that e-mail blocked, its phone decides.
    plan = reconcile(live, blocked={("email", "x@x.io")}, deleted=[deleted])
    assert plan.deleted_relinks == [Relink(1, None, 2)]


def test_a_deleted_row_linked_to_a_secondary_goes_to_that_rows_customer():
    # SQL linked deleted row 3 to secondary 2 (two hops): its customer is 2's, customer 1.
    live = [row(1, "a@x.io", "1"), row(2, "a@x.io", "2", linked_id=1)]
    plan = reconcile(live, deleted=[row(3, "z@x.io", "3", linked_id=2)])
    assert plan.relinks == []
    assert plan.deleted_relinks == [Relink(3, 2, 1)]
    # When the customer splits, it goes with the part holding its e-mail.
    live = [row(1, "a@x.io", "9"), row(2, "b@x.io", "9", linked_id=1)]
    plan = reconcile(live, blocked={SHOP, (PHONE, "9")}, deleted=[row(3, "b@x.io", linked_id=1)])
    assert plan.deleted_relinks == [Relink(3, 1, 2)]
    plan = reconcile(live, blocked={(PHONE, "9")}, deleted=[row(3, "a@x.io", linked_id=2)])
    assert plan.deleted_relinks == [Relink(3, 2, 1)]


def test_a_deleted_row_linked_to_itself_points_at_nothing_as_a_deleted_primary_does():
    # SQL set linkedId = id on deleted row 3. Its values are those of live customer 1,
    # but a deleted row takes no part in matching: it becomes a deleted primary of its
    # own, as a deleted row linked to nothing stays.
    live = [row(1, "a@x.io", "1"), row(2, "a@x.io", "2", linked_id=1)]
    plan = reconcile(live, deleted=[row(3, "a@x.io", "3", linked_id=3)])
    assert plan.relinks == []
    assert plan.deleted_relinks == [Relink(3, 3, None)]
    assert plan.customers_after() == {}
    assert plan.changed
    assert reconcile(live, deleted=[row(3, "a@x.io", "3")]).deleted_relinks == []
    # Live rows still naming it as their customer tell where it belongs: with them, as
    # a primary deleted by SQL goes.
    live = [row(2, "a@x.io", "2", linked_id=1), row(3, "b@x.io", "2", linked_id=1)]
    plan = reconcile(live, deleted=[row(1, "a@x.io", "1", linked_id=1)])
    assert plan.deleted_relinks == [Relink(1, 1, 2)]


def test_a_chain_of_deleted_rows_goes_whole_to_the_customer_at_its_top():
    # SQL chained deleted rows: 5 -> 4 -> 3 -> live secondary 2 -> primary 1. Each gets
    # the customer of the row it points at, so all of them customer 1's, one hop away.
    live = [row(1, "a@x.io", "1"), row(2, "a@x.io", "2", linked_id=1)]
    chain = [row(3, "z@x.io", linked_id=2), row(4, "y@x.io", linked_id=3)]
    plan = reconcile(live, deleted=[*chain, row(5, "x@x.io", linked_id=4)])
    assert plan.deleted_relinks == [Relink(3, 2, 1), Relink(4, 3, 1), Relink(5, 4, 1)]
    assert plan.customers_after() == {1: [1, 2]}
    # When the customer splits, each goes with the part holding its own e-mail.
    live = [row(1, "a@x.io", "9"), row(2, "b@x.io", "9", linked_id=1)]
    chain = [row(3, "a@x.io", linked_id=2), row(4, "b@x.io", linked_id=3)]
    plan = reconcile(live, blocked={(PHONE, "9")}, deleted=chain)
    assert plan.deleted_relinks == [Relink(3, 2, 1), Relink(4, 3, 2)]
    # Under a deleted primary no live row names: its customer is that row.
    chain = [row(6), row(7, linked_id=6), row(8, linked_id=7), row(9, linked_id=8)]
    assert reconcile([], deleted=chain).deleted_relinks == [Relink(8, 7, 6), Relink(9, 8, 6)]
    # Under a row SQL linked to itself, likewise, which becomes that deleted primary.
    chain = [row(6, linked_id=6), row(7, linked_id=6), row(8, linked_id=7)]
    assert reconcile([], deleted=chain).deleted_relinks == [Relink(6, 6, None), Relink(8, 7, 6)]


def test_a_cycle_of_deleted_rows_ends_and_joins_the_customer_live_rows_name():
    # Deleted rows 5 -> 6 -> 7 -> 5 and 8 -> 6, named by no live row: the oldest, 5,
    # becomes their deleted primary and the others point at it (7 does already).
    rows = [row(5, linked_id=6), row(6, linked_id=7), row(7, linked_id=5), row(8, linked_id=6)]
    plan = reconcile([], deleted=rows)
    assert plan.deleted_relinks == [Relink(5, 6, None), Relink(6, 7, 5), Relink(8, 6, 5)]
    # Applied, it changes nothing more.
    after = {r.row_id: r.after for r in plan.deleted_relinks}
    again = [replace(r, linked_id=after.get(r.id, r.linked_id)) for r in rows]
    assert reconcile([], deleted=again).deleted_relinks == []
    # Live rows 2 and 3 still name deleted row 4 (their primary, deleted by SQL), which
    # SQL also linked in a cycle with deleted row 1: all go with rows 2 and 3.
    live = [row(2, "a@x.io", linked_id=4), row(3, "a@x.io", linked_id=4)]
    plan = reconcile(live, deleted=[row(1, linked_id=4), row(4, linked_id=1)])
    assert plan.relinks == [Relink(2, 4, None), Relink(3, 4, 2)]
    assert plan.deleted_relinks == [Relink(1, 4, 2), Relink(4, 1, 2)]


def test_customers_before_and_after_describe_the_change():
    rows = [row(1, "a@x.io", "555"), row(2, "b@x.io", "555", linked_id=1), row(3, "z@x.io")]
    plan = reconcile(rows, {SHOP})
    assert plan.customers_before(rows) == {1: [1, 2]}
    assert plan.customers_after() == {2: [2]}
    assert plan.changed


def test_a_customer_whose_only_change_is_a_deleted_row_relinked_is_a_changed_customer():
    # SQL linked deleted row 3 to secondary 2; putting it back is the customer's only change.
    live = [row(1, "a@x.io", "1"), row(2, "a@x.io", "2", linked_id=1), row(4, "z@x.io")]
    plan = reconcile(live, deleted=[row(3, "a@x.io", "3", linked_id=2)])
    assert plan.relinks == []
    assert plan.customers_before(live) == {1: [1, 2]}
    assert plan.customers_after() == {1: [1, 2]}
    assert plan.changed


@pytest.mark.parametrize(
    ("rows", "bonds", "involved", "expected"),
    [
        pytest.param(
            [row(1, "a@x.io", "1"), row(2, "b@x.io", "2"), row(3, "c@x.io", "1", linked_id=2)],
            (),
            {2},
            {1: [1], 2: [2, 3]},
            id="a-row-moving-lists-where-it-goes",
        ),
        pytest.param(
            [row(1, "a@x.io", "1"), row(2, "a@x.io", "2", linked_id=1), row(4, "d@x.io", "4")],
            [{(EMAIL, "a@x.io"), (EMAIL, "d@x.io")}],
            (),
            {1: [1, 2], 4: [4]},
            id="survivor-with-rows-that-do-not-move",
        ),
        pytest.param(
            [row(1, "a@x.io", "1"), row(2, "b@x.io", "2")], (), {1}, {1: [1]}, id="no-change"
        ),
        pytest.param(
            [row(1, "a@x.io", "1"), row(2, "b@x.io", "2")], (), (), {}, id="nothing-involved"
        ),
    ],
)
def test_customers_before_lists_every_customer_involved(rows, bonds, involved, expected):
    plan = reconcile(rows, bonds=bonds)
    assert plan.customers_before(rows, involved) == expected


def test_customers_after_shows_every_customer_before_as_it_is_now():
    rows = [row(1, "a@x.io", "555"), row(2, "b@x.io", "555", linked_id=1), row(3, "z@x.io")]
    plan = reconcile(rows, {SHOP})
    before = plan.customers_before(rows, {1})
    assert before == {1: [1, 2]}
    # What customer 1 kept, not only the customer split off; customer 3 was not involved.
    assert plan.customers_after(before) == {1: [1], 2: [2]}
    unchanged = reconcile(rows)
    assert unchanged.customers_after(unchanged.customers_before(rows, {1})) == {1: [1, 2]}


@pytest.mark.parametrize(
    ("blocked", "problems"),
    [((), 1), ({SHOP}, 0)],
)
def test_invariants_ignore_blocked_values(blocked, problems):
    rows = [row(1, "a@x.io", "555"), row(2, "b@x.io", "555")]
    assert len(invariant_violations(rows, blocked)) == problems


def test_invariant_violations_keeps_its_old_call():
    rows = [row(1, "a@x.io"), row(2, "a@x.io")]
    assert invariant_violations(rows) == ["customers [1, 2] share a value but were not merged"]


def _random_rows(rng: random.Random, count: int):
    emails = [f"e{i}@x.io" for i in range(count // 2 + 1)]
    phones = [str(100 + i) for i in range(count // 2 + 1)]
    rows = []
    for i in range(1, count + 1):
        email = rng.choice([*emails, None])
        phone = rng.choice(phones + ([None] if email else []))
        # Arbitrary, often wrong links: what reconciliation must repair.
        linked = rng.choice([None, None, *range(1, i)]) if i > 1 else None
        rows.append(row(i, email, phone, linked_id=linked, minute=rng.randrange(count)))
    return rows, emails, phones


@pytest.mark.parametrize("seed", range(60))
def test_applying_a_reconciliation_restores_every_invariant(seed):
    rng = random.Random(seed)
    rows, emails, phones = _random_rows(rng, rng.randrange(1, 25))
    blocked = {(EMAIL, e) for e in rng.sample(emails, rng.randrange(0, 3))}
    blocked |= {(PHONE, p) for p in rng.sample(phones, rng.randrange(0, 2))}
    plan = reconcile(rows, blocked)
    fixed = applied(rows, plan)
    assert invariant_violations(fixed, blocked) == []
    # Idempotent: a second run has nothing to do.
    assert reconcile(fixed, blocked).relinks == []
    # Every customer is exactly one connected group.
    customers = {}
    for r in fixed:
        customers.setdefault(r.primary_id, set()).add(r.id)
    assert sorted(map(sorted, customers.values())) == sorted(map(sorted, plan.groups))


def test_keys_detail_groups_keys_by_kind_sorted():
    keys = {(EMAIL, "b@x.io"), (EMAIL, "a@x.io"), (PHONE, "+15550100"), (PHONE, "123")}
    assert keys_detail(keys) == {"email": ["a@x.io", "b@x.io"], "phone": ["+15550100", "123"]}


@pytest.mark.parametrize(
    ("raw", "kind", "key"),
    [("Test@Test.com", EMAIL, "test@test.com"), ("+1 (555) 010-0", PHONE, "+15550100")],
)
def test_parse_identifier_tells_email_from_phone(raw, kind, key):
    value = parse_identifier(raw)
    assert (value.kind, value.key) == (kind, key)


@pytest.mark.parametrize("raw", ["", "   ", "not a phone", "a@"])
def test_parse_identifier_rejects_junk(raw):
    with pytest.raises(InvalidValue):
        parse_identifier(raw)
