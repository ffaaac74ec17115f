"""Voucher rules without an app: codes, discounts, expiries, offer names and statuses."""

import math
import re
from datetime import datetime, timedelta

import pytest

from webapp.vouchers.rules import (
    ALPHABET,
    CODE_BITS,
    EXPIRED,
    USED,
    VALID,
    VOIDED,
    InvalidVoucherValue,
    discount_percent,
    format_code,
    iso_utc,
    new_code,
    normalise_code,
    parse_discount,
    parse_expiry,
    parse_offer_name,
    voucher_status,
)

NOW = datetime(2026, 6, 1, 12, 0, 0)


def test_alphabet_has_no_look_alikes_and_codes_carry_enough_bits():
    assert len(set(ALPHABET)) == 32
    assert not set("ILOU") & set(ALPHABET)
    assert len(new_code()) * math.log2(len(ALPHABET)) == CODE_BITS
    assert CODE_BITS >= 45


def test_new_codes_are_canonical_and_distinct():
    codes = [new_code() for _ in range(2000)]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(f"[{ALPHABET}]{{10}}", code) for code in codes)
    # Every symbol turns up: the draw covers the whole alphabet.
    assert set("".join(codes)) == set(ALPHABET)


def test_format_groups_for_reading_aloud():
    assert format_code("K7QM3XPD9R") == "K7QM-3XPD-9R"


@pytest.mark.parametrize(
    "typed",
    [
        "K7QM-3XPD-9R",
        "k7qm3xpd9r",
        " k7qm 3xpd 9r ",
        "K7QM_3XPD.9R",
        "k7qm-3xpd-9r",
        # Dashes as word processors and mail programs write them: en and em dash,
        # non-breaking hyphen, minus sign.
        "K7QM\u20133XPD\u20149R",
        "K7QM\u20113XPD\u22129R",
        # Invisible characters a code copied from a web page carries.
        "K7QM\u00ad3XPD\u200b9R\ufeff",
        # Full-width letters and digits, as an East Asian keyboard types them.
        "\uff2b\uff17\uff31\uff2d\uff0d\uff13\uff38\uff30\uff24\uff0d\uff19\uff32",
    ],
)
def test_codes_are_accepted_however_typed(typed):
    assert normalise_code(typed) == "K7QM3XPD9R"


@pytest.mark.parametrize(("typed", "canonical"), [("OOOO-IIII-LL", "0000111111"), ("o1l0", None)])
def test_look_alike_letters_read_as_the_digits_they_resemble(typed, canonical):
    if canonical is None:
        with pytest.raises(InvalidVoucherValue):
            normalise_code(typed)
    else:
        assert normalise_code(typed) == canonical


@pytest.mark.parametrize(
    "typed", ["", "K7QM-3XPD", "K7QM-3XPD-9RX", "K7QM-3XPD-9U", "K7QM/3XPD/9R", "ÄÄÄÄ3XPD9R"]
)
def test_malformed_codes_are_refused(typed):
    with pytest.raises(InvalidVoucherValue):
        normalise_code(typed)


@pytest.mark.parametrize(
    ("raw", "hundredths"),
    [
        (10, 1000),
        (12.5, 1250),
        ("7.25", 725),
        (100, 10000),
        (0.01, 1),
        ("100.00", 10000),
        ("12.500", 1250),
        ("1E+2", 10000),
    ],
)
def test_discounts_in_hundredths_of_a_percent(raw, hundredths):
    assert parse_discount(raw) == hundredths


@pytest.mark.parametrize(
    "raw",
    [
        0,
        -5,
        100.01,
        101,
        12.345,
        "ten",
        "",
        None,
        True,
        [],
        "nan",
        "inf",
        # Rounded in a 28-digit Decimal context these became 0% and 100%; the
        # CLI and the dashboard form read discounts here too.
        "1e-999999999",
        "99.999999999999999999999999999",
        "1.000000000000000000000000000001",
        "1e999999999",
    ],
)
def test_bad_discounts_are_refused(raw):
    with pytest.raises(InvalidVoucherValue):
        parse_discount(raw)


@pytest.mark.parametrize(
    ("hundredths", "shown"), [(1000, 10), (1250, 12.5), (1, 0.01), (10000, 100)]
)
def test_discount_shown_as_percent(hundredths, shown):
    assert discount_percent(hundredths) == shown
    assert type(discount_percent(hundredths)) is type(shown)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("2026-12-31T23:59:59+01:00", datetime(2026, 12, 31, 22, 59, 59)),
        ("2026-07-01T00:00:00Z", datetime(2026, 7, 1)),
        ("2026-06-01T08:00:01-04:00", datetime(2026, 6, 1, 12, 0, 1)),
    ],
)
def test_expiry_is_stored_as_utc(raw, stored):
    assert parse_expiry(raw, NOW) == stored


@pytest.mark.parametrize(
    "raw",
    [
        "2026-12-31T23:59:59",  # no offset
        "2026-12-31",
        "tomorrow",
        "",
        None,
        1767225599,
        "2026-06-01T12:00:00Z",  # exactly now is not the future
        "2026-06-01T13:59:59+02:00",
        "9999-12-31T23:59:59-01:00",  # past the last datetime once in UTC
    ],
)
def test_bad_or_past_expiries_are_refused(raw):
    with pytest.raises(InvalidVoucherValue):
        parse_expiry(raw, NOW)


def test_iso_utc_round_trips():
    assert iso_utc(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05+00:00"
    assert parse_expiry(iso_utc(NOW + timedelta(days=1)), NOW) == NOW + timedelta(days=1)
    assert iso_utc(None) is None


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Summer sale", "Summer sale"),
        ("  Summer   sale ", "Summer sale"),
        ("Summer\tsale\r\n", "Summer sale"),
    ],
)
def test_offer_names_are_trimmed(raw, name):
    assert parse_offer_name(raw) == name


@pytest.mark.parametrize(
    "raw", ["", "   ", None, 5, "x" * 121, "Sale\x00", "Sale\x1f", "Sale\x85", "\u202eelaS"]
)
def test_bad_offer_names_are_refused(raw):
    with pytest.raises(InvalidVoucherValue):
        parse_offer_name(raw)


@pytest.mark.parametrize(
    ("used", "voided", "expires", "status"),
    [
        (None, None, NOW + timedelta(seconds=1), VALID),
        (None, None, NOW, EXPIRED),
        (NOW, None, NOW + timedelta(days=1), USED),
        (NOW, None, NOW - timedelta(days=1), USED),
        (None, NOW, NOW + timedelta(days=1), VOIDED),
        (None, NOW, NOW - timedelta(days=1), VOIDED),
    ],
)
def test_status_precedence(used, voided, expires, status):
    assert voucher_status(used, voided, expires, NOW) == status
