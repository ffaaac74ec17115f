"""The checkout-like request mix, drawn with a fixed seed into a file wrk replays."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from bench import customers

RETURNING = "returning"
NEW_CUSTOMER = "new"
NEW_EMAIL = "new_email"

# Shares of the mix: returning customers looked up by e-mail or phone, new
# customers, returning customers with a new e-mail (issue 2).
MIX = ((RETURNING, 0.70), (NEW_CUSTOMER, 0.20), (NEW_EMAIL, 0.10))


class MixWriter:
    """Draws requests against ``seeded`` customers; new values never repeat across files."""

    def __init__(self, seeded: int, seed: int):
        self.seeded = seeded
        self.rng = random.Random(seed)
        self.next_new_customer = seeded
        self.next_fresh_email = 0

    def _returning(self) -> dict:
        rng = self.rng
        index = rng.randrange(self.seeded)
        email = customers.email(index)
        if customers.has_second_email(index) and rng.random() < 0.5:
            email = customers.second_email(index)
        if rng.random() < 0.1:
            # Matching ignores case and surrounding white space.
            email = f" {email.upper()} "
        phone = rng.choice((customers.phone(index), *customers.phone_variants(index)))
        lookup = rng.choice(("email", "phone", "both"))
        if lookup == "email":
            return {"email": email, "phoneNumber": None}
        if lookup == "phone":
            return {"phoneNumber": phone}
        return {"email": email, "phoneNumber": phone}

    def _new_customer(self) -> dict:
        index = self.next_new_customer
        self.next_new_customer += 1
        return {"email": customers.email(index), "phoneNumber": customers.phone(index)}

    def _new_email(self) -> dict:
        index = self.rng.randrange(self.seeded)
        serial = self.next_fresh_email
        self.next_fresh_email += 1
        phone = self.rng.choice(customers.phone_variants(index))
        return {"email": customers.fresh_email(serial), "phoneNumber": phone}

    def draw(self) -> tuple[str, dict]:
        """One request: its kind and its JSON body."""
        roll = self.rng.random()
        kind = MIX[-1][0]
        for candidate, share in MIX:
            if roll < share:
                kind = candidate
                break
            roll -= share
        if kind == RETURNING:
            return kind, self._returning()
        if kind == NEW_CUSTOMER:
            return kind, self._new_customer()
        return kind, self._new_email()

    def write(self, path: Path, count: int) -> Counter:
        """Write ``count`` requests as 'kind<TAB>json' lines; returns how many of each kind."""
        kinds: Counter = Counter()
        with path.open("w", encoding="utf-8") as handle:
            for _ in range(count):
                kind, body = self.draw()
                kinds[kind] += 1
                handle.write(f"{kind}\t{json.dumps(body, separators=(',', ':'))}\n")
        return kinds
