"""Parallel identify requests over separate connections to a real gunicorn, on both databases.

Each test fires its requests from at least 16 threads released together by a
barrier, each thread on its own HTTP connection (so the requests land on
different gunicorn workers and database connections), then checks every
invariant on the rows the database holds.
"""

from __future__ import annotations

import random
import threading

from tests.builders import assert_invariants, live_rows, post_once

THREADS = 16


def _post(url: str, body: dict) -> tuple[int, dict]:
    return post_once(url, "/identify", body)


def fire(url: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """Send ``bodies`` from THREADS threads that start together; answers in body order."""
    results: list[tuple[int, dict] | None] = [None] * len(bodies)
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            barrier.wait()
            for index in range(offset, len(bodies), THREADS):
                results[index] = _post(url, bodies[index])
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results  # type: ignore[return-value]


def assert_all_ok(results: list[tuple[int, dict]]) -> None:
    statuses = [status for status, _ in results]
    assert statuses == [200] * len(results), [body for status, body in results if status != 200]


def test_one_new_person_sent_16_times_at_once_is_one_row(live_server):
    for round_ in range(4):
        body = {"email": f"marty{round_}@hillvalley.edu", "phoneNumber": f"555-010{round_}"}
        results = fire(live_server.url, [body] * THREADS)
        assert_all_ok(results)
        mine = [row for row in live_rows() if row.email == body["email"]]
        assert len(mine) == 1
        assert {answer["contact"]["primaryContactId"] for _, answer in results} == {mine[0].id}
    assert len(live_rows()) == 4
    assert_invariants()


def test_16_bridges_at_once_merge_a_chain_into_the_oldest_customer(live_server):
    # 17 separate customers, created one after the other: e0/p0 ... e16/p16.
    for i in range(THREADS + 1):
        status, _ = _post(live_server.url, {"email": f"e{i}@x.io", "phoneNumber": f"{1000 + i}"})
        assert status == 200
    # Each request bridges customer i and customer i+1; all race.
    bodies = [{"email": f"e{i}@x.io", "phoneNumber": f"{1001 + i}"} for i in range(THREADS)]
    random.Random(7).shuffle(bodies)
    assert_all_ok(fire(live_server.url, bodies))
    rows = live_rows()
    assert len(rows) == THREADS + 1  # bridges never add rows
    assert {row.primary_id for row in rows} == {1}
    assert_invariants()
    status, body = _post(live_server.url, {"email": "e16@x.io"})
    assert status == 200
    assert body["contact"]["primaryContactId"] == 1
    assert len(body["contact"]["emails"]) == THREADS + 1


def test_random_overlapping_traffic_keeps_every_invariant(live_server):
    rng = random.Random(2026)
    emails = [f"person{i}@shop.example.org" for i in range(12)]
    phones = [f"+44 20 7946 {i:04d}" for i in range(12)]
    bodies = []
    for _ in range(8 * THREADS):
        choice = rng.random()
        email = rng.choice(emails) if choice < 0.85 else None
        phone = rng.choice(phones) if choice > 0.15 else None
        bodies.append({"email": email, "phoneNumber": phone})
    results = fire(live_server.url, bodies)
    assert_all_ok(results)

    assert_invariants()
    rows = live_rows()
    stored_emails = {row.email for row in rows}
    stored_phones = {row.phone for row in rows}
    for body, (_, answer) in zip(bodies, results, strict=True):
        # No value is lost, and each answer holds the values of its request.
        if body["email"]:
            assert body["email"] in stored_emails
            assert body["email"] in answer["contact"]["emails"]
        if body["phoneNumber"]:
            assert body["phoneNumber"] in stored_phones
            assert body["phoneNumber"] in answer["contact"]["phoneNumbers"]
    # Each value is held by exactly one customer at the end.
    owners: dict[str, set[int]] = {}
    for row in rows:
        for value in (row.email, row.phone):
            if value:
                owners.setdefault(value, set()).add(row.primary_id)
    assert all(len(ids) == 1 for ids in owners.values())
