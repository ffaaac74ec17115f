"""The linking rules on their own: normalisation, plans, answers and invariants (no app)."""

import pytest

from tests.builders import row
from webapp.identity.rules import (
    EMAIL,
    PHONE,
    InvalidValue,
    Value,
    consolidate,
    invariant_violations,
    parse_email,
    parse_phone,
    plan_identify,
)


def email(text: str) -> Value:
    return Value(EMAIL, text, text.lower())


def phone(text: str) -> Value:
    return Value(PHONE, text, text)


@pytest.mark.parametrize(
    ("raw", "stored", "key"),
    [
        ("lorraine@hillvalley.edu", "lorraine@hillvalley.edu", "lorraine@hillvalley.edu"),
        ("  Lorraine@HillValley.EDU ", "Lorraine@HillValley.EDU", "lorraine@hillvalley.edu"),
        ("\tdoc@hillvalley.edu\n", "doc@hillvalley.edu", "doc@hillvalley.edu"),
        ("émile@exemple.fr", "émile@exemple.fr", "émile@exemple.fr"),
        # A combining accent is the same letter as the precomposed one (NFC).
        ("E\u0301mile@Exemple.fr", "E\u0301mile@Exemple.fr", "\u00e9mile@exemple.fr"),
        ("JOSE\u0301@example.com", "JOSE\u0301@example.com", "jos\u00e9@example.com"),
        # A domain written in its ASCII (punycode) form is the same domain.
        ("anna@xn--bcher-kva.de", "anna@xn--bcher-kva.de", "anna@b\u00fccher.de"),
        ("Anna@B\u00dcCHER.de", "Anna@B\u00dcCHER.de", "anna@b\u00fccher.de"),
    ],
)
def test_email_is_trimmed_and_matched_without_case(raw, stored, key):
    value = parse_email(raw)
    assert (value.kind, value.stored, value.key) == (EMAIL, stored, key)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "plainaddress",
        "@hillvalley.edu",
        "doc@",
        "doc@@hillvalley.edu",
        "a b@c.de",
        "x" * 250 + "@hv.edu",
        "doc\x00@hv.edu",
    ],
)
def test_invalid_emails_are_rejected(raw):
    with pytest.raises(InvalidValue):
        parse_email(raw)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("123456", "123456"),
        ("  123456 ", "123456"),
        ("123-456", "123456"),
        ("123.456", "123456"),
        ("(123) 456", "123456"),
        ("[123] 45-6", "123456"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+1 (555) 010-9999", "+15550109999"),
        ("0044.20.7946.0958", "00442079460958"),
        ("1", "1"),
        # White space pasted from a web page or a CJK keyboard is white space too.
        ("123\u00a0456", "123456"),
        ("123\u3000456", "123456"),
    ],
)
def test_phone_separators_are_ignored_and_leading_plus_kept(raw, key):
    value = parse_phone(raw)
    assert (value.kind, value.stored, value.key) == (PHONE, raw.strip(), key)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "---",
        "()",
        "12a456",
        "123+456",
        "++123",
        "\uff11\uff12\uff13",  # full-width digits are not ASCII digits
        "1" * 21,
        "1-" * 40,
        "12\x0034",
        # Stored as sent, these would put a tab, a line break or a C1 control in the row.
        "123\t456",
        "123\x85456",
        "123\u2028456",
        "123\x1c456",
        "call me",
    ],
)
def test_invalid_phones_are_rejected(raw):
    with pytest.raises(InvalidValue):
        parse_phone(raw)


def test_plus_is_part_of_the_key():
    assert parse_phone("+123456").key != parse_phone("123456").key


def test_new_values_create_a_primary():
    plan = plan_identify([email("a@x.io"), phone("1")], [])
    assert plan.survivor_id is None
    assert plan.absorbed == []
    assert plan.new_row is not None
    assert (plan.new_row.email, plan.new_row.phone, plan.new_row.linked_id) == ("a@x.io", "1", None)


@pytest.mark.parametrize(
    ("values", "writes_new_row"),
    [
        ([email("a@x.io"), phone("1")], False),  # exact repeat
        ([email("a@x.io")], False),  # known email, no phone
        ([phone("1")], False),  # known phone, no email
        ([email("A@X.IO")], False),  # another case of a known email
        ([email("a@x.io"), phone("2")], True),  # new phone
        ([email("b@x.io"), phone("1")], True),  # new email
    ],
)
def test_a_row_is_added_only_for_new_values(values, writes_new_row):
    rows = [row(1, "a@x.io", "1")]
    plan = plan_identify(values, rows)
    assert plan.survivor_id == 1
    assert plan.absorbed == []
    assert (plan.new_row is not None) == writes_new_row
    if writes_new_row:
        assert plan.new_row.linked_id == 1


def test_bridge_merges_under_the_oldest_primary_without_new_row():
    rows = [row(1, "george@hv.edu", "919191"), row(2, "biff@hv.edu", "717171")]
    plan = plan_identify([email("george@hv.edu"), phone("717171")], rows)
    assert (plan.survivor_id, plan.absorbed, plan.new_row) == (1, [2], None)


def test_oldest_is_by_creation_time_then_id():
    # Row 5 was created before row 2 (clock order, not id order).
    rows = [row(2, "a@x.io", minute=10), row(5, None, "9", minute=1)]
    plan = plan_identify([email("a@x.io"), phone("9")], rows)
    assert (plan.survivor_id, plan.absorbed) == (5, [2])
    tied = [row(7, "a@x.io", minute=3), row(4, None, "9", minute=3)]
    assert plan_identify([email("a@x.io"), phone("9")], tied).survivor_id == 4


def test_bridge_of_three_customers_absorbs_all_but_the_oldest_and_their_secondaries():
    rows = [
        row(1, "a@x.io", "1"),
        row(2, "b@x.io", "2"),
        row(3, "b2@x.io", "2", linked_id=2),
        row(4, "c@x.io", "3"),
    ]
    plan = plan_identify([email("b2@x.io"), phone("3")], rows)
    assert (plan.survivor_id, plan.absorbed, plan.new_row) == (2, [4], None)
    plan = plan_identify([email("a@x.io"), phone("2")], rows)
    assert (plan.survivor_id, plan.absorbed, plan.new_row) == (1, [2], None)


def test_known_email_with_new_phone_adds_a_secondary_to_that_customer_only():
    rows = [row(1, "a@x.io", "1"), row(2, "b@x.io", "2")]
    plan = plan_identify([email("b@x.io"), phone("3")], rows[1:])
    assert (plan.survivor_id, plan.absorbed) == (2, [])
    assert plan.new_row is not None
    assert (plan.new_row.email, plan.new_row.phone, plan.new_row.linked_id) == ("b@x.io", "3", 2)


def test_plan_refuses_incomplete_customers():
    with pytest.raises(ValueError):
        plan_identify([email("a@x.io")], [row(3, "a@x.io", linked_id=1)])
    with pytest.raises(ValueError):
        plan_identify([], [])


def test_consolidate_orders_primary_first_then_creation_order_each_once():
    rows = [
        row(1, "lorraine@hv.edu", "123456"),
        row(2, "mcfly@hv.edu", "123456", linked_id=1),
        row(3, "MCFLY@hv.edu", "555", linked_id=1),
        row(4, None, "555", linked_id=1),
        row(9, "other@hv.edu", "9"),  # another customer, ignored
    ]
    customer = consolidate(1, rows)
    assert customer.emails == ["lorraine@hv.edu", "mcfly@hv.edu"]
    assert customer.phone_numbers == ["123456", "555"]
    assert customer.secondary_ids == [2, 3, 4]


def test_consolidate_lists_the_primarys_values_first_even_when_secondaries_are_older():
    rows = [row(3, None, "7", minute=50), row(1, "old@x.io", "8", linked_id=3, minute=1)]
    customer = consolidate(3, rows)
    assert customer.emails == ["old@x.io"]
    assert customer.phone_numbers == ["7", "8"]
    assert customer.secondary_ids == [1]


def test_consolidate_needs_the_primary():
    with pytest.raises(ValueError):
        consolidate(1, [row(2, "a@x.io", linked_id=1)])


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([row(1, "a@x.io"), row(2, "a@x.io")], "share a value"),
        (
            [row(1, "a@x.io"), row(2, "b@x.io", linked_id=1), row(3, "c@x.io", linked_id=2)],
            "secondary",
        ),
        ([row(2, "b@x.io", linked_id=1)], "not a live row"),
        (
            [row(1, "a@x.io", "5"), row(2, "b@x.io"), row(3, "b@x.io", "5", linked_id=2)],
            "share a value",
        ),
    ],
)
def test_invariant_violations_are_found(rows, problem):
    problems = invariant_violations(rows)
    assert problems and problem in " ".join(problems)


def test_consistent_rows_have_no_violations():
    rows = [
        row(1, "a@x.io", "1"),
        row(2, "b@x.io", "1", linked_id=1),
        row(3, None, "2", linked_id=1),
        row(4, "z@x.io", "9"),
    ]
    assert invariant_violations(rows) == []
