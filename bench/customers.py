"""Deterministic synthetic customers: the same index always gives the same e-mail and phone.

Seeding and the request mix both derive values from a customer's index, so a
request can name a seeded customer without reading the database back.
"""

from __future__ import annotations

FIRST_NAMES = (
    "ada", "alan", "amira", "bruno", "chen", "dara", "elena", "farid", "grace", "hana",
    "ivan", "jonas", "kemi", "lars", "maya", "nina", "omar", "priya", "quinn", "rosa",
    "sami", "tariq", "uma", "vera", "wei", "ximena", "yusuf", "zoe",
)  # fmt: skip
LAST_NAMES = (
    "adams", "baker", "costa", "dubois", "evans", "fischer", "garcia", "haddad", "ito",
    "jensen", "kowalski", "lopez", "moreau", "nakamura", "okafor", "patel", "quispe",
    "rossi", "silva", "tanaka", "ueda", "varga", "weber", "xu", "yilmaz", "zhang",
)  # fmt: skip
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "shop.example")

# Multipliers coprime with 10**9: i -> (a * i + b) mod 10**9 is a bijection, so
# every index below 10**9 gets its own phone and name pattern, spread over the
# key space the way real values are rather than in insertion order.
_MODULUS = 10**9
_SCRAMBLE_A = 2_654_435_761
_SCRAMBLE_B = 1_000_000_007

# One customer in this many has a second e-mail, stored as a secondary row.
SECONDARY_EVERY = 5


def _scramble(index: int, multiplier: int) -> int:
    return (multiplier * index + 12_345) % _MODULUS


def _names(index: int) -> tuple[str, str]:
    h = _scramble(index, _SCRAMBLE_B)
    return FIRST_NAMES[h % len(FIRST_NAMES)], LAST_NAMES[(h // 97) % len(LAST_NAMES)]


def full_name(index: int) -> str:
    """The name a customer gave with an engagement (names repeat, as real ones do)."""
    first, last = _names(index)
    return f"{first.title()} {last.title()}"


def primary_id(index: int) -> int:
    """The id of the customer's primary row as the seeder numbers rows (from 1, in order)."""
    return index + 1 + (index + SECONDARY_EVERY - 1) // SECONDARY_EVERY


def email(index: int) -> str:
    """The e-mail a customer first checked out with."""
    first, last = _names(index)
    return f"{first}.{last}{index}@{DOMAINS[index % len(DOMAINS)]}"


def second_email(index: int) -> str:
    """The other e-mail of a customer that has one (see has_second_email)."""
    first, last = _names(index)
    return f"{first[0]}{last}.{index}@{DOMAINS[(index + 1) % len(DOMAINS)]}"


def fresh_email(serial: int) -> str:
    """An e-mail no seeded customer holds: a returning customer's new address."""
    first, last = _names(serial)
    return f"{last}.{first}.new{serial}@{DOMAINS[serial % len(DOMAINS)]}"


def has_second_email(index: int) -> bool:
    """Whether the customer was seeded with a secondary row holding a second e-mail."""
    return index % SECONDARY_EVERY == 0


def phone_digits(index: int) -> str:
    """The customer's phone as 11 bare digits (a UK-style mobile number)."""
    return f"07{_scramble(index, _SCRAMBLE_A):09d}"


def phone(index: int) -> str:
    """The phone as first stored: '07123 456789'."""
    digits = phone_digits(index)
    return f"{digits[:5]} {digits[5:]}"


def phone_variants(index: int) -> tuple[str, ...]:
    """Other ways a checkout form may send the same phone; all match the stored one."""
    d = phone_digits(index)
    return (d, f"{d[:5]}-{d[5:8]}-{d[8:]}", f"({d[:5]}) {d[5:8]} {d[8:]}", f"{d[:5]}.{d[5:]}")


def contact_rows_per_customers(customers: int) -> int:
    """How many contact rows seeding ``customers`` customers writes."""
    return customers + (customers + SECONDARY_EVERY - 1) // SECONDARY_EVERY


def customers_for_contacts(contacts: int) -> int:
    """How many customers to seed for about ``contacts`` contact rows."""
    return max(1, round(contacts * SECONDARY_EVERY / (SECONDARY_EVERY + 1)))
