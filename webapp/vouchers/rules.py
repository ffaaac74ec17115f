"""Voucher rules: codes, discounts, expiries and offer names, as plain functions.

No Flask and no database, so each rule is unit-tested on its own
(tests/test_vouchers_rules.py).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from ..text import free_text_problem

# Crockford's base32: digits and capitals without I, L, O and U, so nothing
# read aloud or copied from paper can be confused with another symbol.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 10  # 10 symbols of 5 bits: 50 bits from the system's CSPRNG.
CODE_BITS = CODE_LENGTH * 5
_GROUPS = (4, 4, 2)

# What a person may type instead of the canonical symbol (Crockford's decoding).
_LOOK_ALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
# Besides ASCII: the dashes word processors and mail programs put in place of a
# hyphen (en dash, non-breaking hyphen, minus sign...) and the invisible
# characters a code copied from a web page or an HTML e-mail may carry.
_SEPARATORS = re.compile(r"[\s\-_.\u2010-\u2015\u2212\u00ad\u200b-\u200d\u2060\ufeff]")
_CANONICAL = re.compile(f"[{ALPHABET}]{{{CODE_LENGTH}}}")

MAX_OFFER_NAME = 120
# Discounts are stored as hundredths of a percent: 1250 means 12.5 %.
HUNDREDTHS = 100
MAX_DISCOUNT = 100 * HUNDREDTHS

VALID = "valid"
USED = "used"
EXPIRED = "expired"
VOIDED = "voided"
STATUSES = (VALID, USED, EXPIRED, VOIDED)


class InvalidVoucherValue(ValueError):
    """A code, discount, expiry or offer name that cannot be accepted; the message says why."""


def new_code() -> str:
    """A fresh code in canonical form (no separators), drawn from ``secrets``."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(raw: str) -> str:
    """The canonical form of a typed code: case, separators and look-alikes forgiven."""
    # NFKC first: full-width letters and digits (an East Asian keyboard) become ASCII.
    text = unicodedata.normalize("NFKC", raw)
    compact = _SEPARATORS.sub("", text).upper().translate(_LOOK_ALIKES)
    if not _CANONICAL.fullmatch(compact):
        raise InvalidVoucherValue(
            f"a voucher code is {CODE_LENGTH} letters and digits, like K7QM-3XPD-9R"
        )
    return compact


def format_code(code: str) -> str:
    """A canonical code grouped for reading aloud: ``K7QM-3XPD-9R``."""
    parts, start = [], 0
    for size in _GROUPS:
        parts.append(code[start : start + size])
        start += size
    return "-".join(parts)


# A decimal comma (12,5) is refused too: the message shows the point.
_NOT_A_PERCENTAGE = "discount must be a number of percent, such as 10 or 12.5"


def parse_discount(raw: object) -> int:
    """A percentage (0 < d <= 100, at most two decimals) as hundredths of a percent."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str | Decimal):
        raise InvalidVoucherValue(_NOT_A_PERCENTAGE)
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise InvalidVoucherValue(_NOT_A_PERCENTAGE) from None
    if not value.is_finite() or not 0 < value <= 100:
        raise InvalidVoucherValue("discount must be more than 0 and at most 100 percent")
    # Exact, on the digits: Decimal arithmetic rounds to 28 digits, which would
    # issue "99.999999999999999999999999999" as 100 and "1e-999999999" as 0.
    _sign, digits, exponent = value.as_tuple()
    shift = exponent + 2  # hundredths = the digits times 10**shift
    if shift < 0 and (-shift > len(digits) or any(digits[shift:])):
        raise InvalidVoucherValue("discount may have at most two decimals")
    kept = digits[:shift] if shift < 0 else digits + (0,) * shift
    return int("".join(map(str, kept)))


def discount_percent(hundredths: int) -> int | float:
    """Hundredths of a percent as the number the API shows: 10 or 12.5."""
    whole, rest = divmod(hundredths, HUNDREDTHS)
    return whole if rest == 0 else hundredths / HUNDREDTHS


def parse_expiry(raw: object, now: datetime | None) -> datetime:
    """An ISO 8601 date-time with an offset, in the future of ``now`` (naive UTC); naive UTC.

    With ``now`` None, any time (the replay of a request that came when it was future).
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidVoucherValue("expiry must be an ISO 8601 date-time with an offset")
    try:
        # RFC 3339 lets "t" and "z" be lower case; fromisoformat wants them upper.
        moment = datetime.fromisoformat(raw.strip().upper())
    except ValueError:
        raise InvalidVoucherValue(
            "expiry must be an ISO 8601 date-time with an offset, like 2026-12-31T23:59:59+01:00"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidVoucherValue("expiry needs a UTC offset, like +01:00 or Z")
    try:
        expires_at = moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        # 9999-12-31T23:59:59-01:00 lies past the last datetime once in UTC.
        raise InvalidVoucherValue("expiry is out of range") from None
    if now is not None:
        check_future(expires_at, now)
    return expires_at


def check_future(expires_at: datetime, now: datetime) -> None:
    """InvalidVoucherValue unless the expiry (naive UTC) is after ``now``."""
    if expires_at <= now:
        raise InvalidVoucherValue("expiry must be in the future")


def iso_utc(moment: datetime | None) -> str | None:
    """A stored naive-UTC moment as ISO 8601 with its offset, for answers."""
    return None if moment is None else moment.replace(tzinfo=UTC).isoformat()


def parse_offer_name(raw: object) -> str:
    """An offer name: non-blank text of at most MAX_OFFER_NAME characters, whitespace collapsed."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidVoucherValue("offer_name must be a non-empty string")
    # Tabs and line breaks become single spaces below; any other control character is refused.
    problem = free_text_problem(raw, multiline=True)
    if problem:
        raise InvalidVoucherValue(f"offer_name {problem}")
    name = " ".join(raw.split())
    if len(name) > MAX_OFFER_NAME:
        raise InvalidVoucherValue(f"offer_name is longer than {MAX_OFFER_NAME} characters")
    return name


def voucher_status(
    used_at: datetime | None,
    voided_at: datetime | None,
    expires_at: datetime,
    now: datetime,
) -> str:
    """Where a voucher stands: voided, used, expired or valid (in that precedence)."""
    if voided_at is not None:
        return VOIDED
    if used_at is not None:
        return USED
    if expires_at <= now:
        return EXPIRED
    return VALID
