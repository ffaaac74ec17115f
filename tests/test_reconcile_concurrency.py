"""Agents reconcile while checkout traffic runs: identify requests over a live gunicorn, on both
databases, racing blocks, merges, deletes and whole-database runs. Invariants hold at the end.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import suppress

from sqlalchemy import select

from tests.builders import assert_invariants, live_rows
from tests.test_concurrency import _post
from webapp.extensions import db
from webapp.identity.rules import parse_identifier
from webapp.models import Contact
from webapp.reconcile.core import ReconcileError
from webapp.reconcile.jobs import claim_job, create_job, run_job
from webapp.reconcile.service import (
    delete_contact,
    merge_customers,
    reconcile_customer,
    set_blocked,
)

THREADS = 12
AGENT = "agent@example.com"
EMAILS = [f"shopper{i}@x.io" for i in range(24)]
PHONES = [f"+4420700{i:03d}" for i in range(12)] + ["555"]


def _traffic(url: str, stop: threading.Event, seed: int, answers: list[int], errors: list):
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            body = {"email": rng.choice([*EMAILS, None]), "phoneNumber": rng.choice(PHONES)}
            status, _ = _post(url, body)
            answers.append(status)
    except BaseException as exc:  # surfaced in the test's thread
        errors.append(exc)


def _primary_ids() -> list[int]:
    ids = list(
        db.session.scalars(
            select(Contact.id).where(Contact.linkedId.is_(None), Contact.deletedAt.is_(None))
        )
    )
    db.session.rollback()
    return ids


def test_agents_reconcile_while_checkout_traffic_runs(app, live_server):
    app.config["RECONCILE_BATCH_SIZE"] = 3
    stop = threading.Event()
    answers: list[int] = []
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_traffic, args=(live_server.url, stop, seed, answers, errors))
        for seed in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    rng = random.Random(7)
    actions = 0
    try:
        deadline = time.monotonic() + 20
        while len(answers) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        shop = parse_identifier("555")
        set_blocked(shop, True, AGENT, "the shop's own phone")
        for round_number in range(3):
            primaries = _primary_ids()
            if len(primaries) >= 2:
                first, second = rng.sample(primaries, 2)
                # A concurrent request may have merged them first.
                with suppress(ReconcileError):
                    merge_customers(first, second, AGENT)
            reconcile_customer(rng.choice(_primary_ids()), AGENT)
            victim = rng.choice([row.id for row in live_rows()])
            db.session.rollback()
            with suppress(ReconcileError):
                delete_contact(victim, AGENT)
            job = create_job(AGENT)
            claim_job(job.id)
            run_job(job.id)
            set_blocked(shop, round_number % 2 == 1, AGENT, "the shop's own phone")
            actions += 5
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert actions == 15
    # Only blocked-only requests (the shop phone alone, while blocked) are refused.
    assert set(answers) <= {200, 422}, sorted(set(answers))
    assert answers.count(200) > 100
    assert_invariants()
    # And each customer is exactly what the rules say: a fresh run has nothing to fix.
    job = create_job(AGENT)
    claim_job(job.id)
    assert run_job(job.id).rows_changed == 0
