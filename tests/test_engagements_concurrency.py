"""Retries racing each other through a real gunicorn (4 workers), on SQLite and MariaDB.

16 threads released together by a barrier, each on its own HTTP connection,
send the same event (or the same telephony webhook); the database must end
with one row and every answer must carry that row's id. Last, an event whose
contact row agents keep deleting gives up with a 503, as a lost race does (in a
batch, only its own events do).
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from tests.builders import assert_invariants
from tests.builders import post_once as post
from tests.openapi_check import assert_matches_openapi
from webapp.engagements.models import Engagement, ScreenPop
from webapp.extensions import db

THREADS = 16


def fire(url: str, path: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """POST each body from its own thread, all released at once; answers in body order."""
    results: list[tuple[int, dict] | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = post(url, path, bodies[index])
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results  # type: ignore[return-value]


def count(model) -> int:
    total = db.session.scalar(select(func.count()).select_from(model))
    db.session.rollback()
    return total


@pytest.mark.parametrize("same_person", [True, False], ids=["same-person", "other-people"])
def test_one_external_id_sent_16_times_at_once_is_one_event(live_server, same_person):
    bodies = [
        {
            "channel": "whatsapp",
            "direction": "inbound",
            # The same message id arriving with different senders still stores once.
            "email": "anna@example.com" if same_person else f"sender{i}@example.com",
            "externalId": "wamid.HBgL",
        }
        for i in range(THREADS)
    ]
    results = fire(live_server.url, "/events", bodies)
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * (THREADS - 1) + [201], results
    assert len({body["event"]["id"] for _, body in results}) == 1
    assert count(Engagement) == 1
    assert_invariants()


def test_16_messages_under_one_external_id_at_once_store_one_and_refuse_the_rest(live_server):
    # Each copy is another message: whichever is stored first, the others are refused
    # (422), never answered as if they had been stored.
    bodies = [
        {
            "channel": "sms",
            "direction": "inbound",
            "email": "anna@example.com",
            "externalId": "sms-1",
            "summary": f"message {i}",
        }
        for i in range(THREADS)
    ]
    results = fire(live_server.url, "/events", bodies)
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [422] * (THREADS - 1), results
    assert {body["error"]["code"] for status, body in results if status == 422} == {
        "external_id_reused"
    }
    assert count(Engagement) == 1


def test_one_call_id_sent_16_times_at_once_pops_once(live_server):
    status, _ = post(
        live_server.url, "/events", {"channel": "sms", "direction": "inbound", "phoneNumber": "555"}
    )
    assert status == 201
    body = {"phoneNumber": "555", "callId": "pbx-1"}
    results = fire(live_server.url, "/calls/incoming", [body] * THREADS)
    assert {status for status, _ in results} == {201}
    assert len({answer["popId"] for _, answer in results}) == 1
    assert len({answer["eventId"] for _, answer in results}) == 1
    assert (count(Engagement), count(ScreenPop)) == (2, 1)


def test_a_call_answered_by_two_agents_at_once_is_one_agents_and_its_end_is_kept_once(
    live_server,
):
    url = live_server.url
    sms = {"channel": "sms", "direction": "inbound", "phoneNumber": "555"}
    assert post(url, "/events", sms)[0] == 201
    assert post(url, "/calls/incoming", {"phoneNumber": "555", "callId": "pbx-2"})[0] == 201
    agents = ["ann@support.example", "bob@support.example"] * (THREADS // 2)
    results = fire(
        url,
        "/calls/status",
        [{"callId": "pbx-2", "status": "answered", "agent": agent} for agent in agents],
    )
    # The first one through the pop's row lock names the agent; the other agent's are refused.
    winner = {answer["answeredBy"] for status, answer in results if status == 200}
    assert len(winner) == 1, results
    for agent, (status, answer) in zip(agents, results, strict=True):
        assert status == (200 if agent in winner else 422), answer
        if status == 422:
            assert answer["error"]["code"] == "call_status_conflict"
    assert len({answer["answeredAt"] for status, answer in results if status == 200}) == 1

    results = fire(
        url,
        "/calls/status",
        [{"callId": "pbx-2", "status": "ended", "durationSeconds": 30}] * THREADS,
    )
    assert {status for status, _ in results} == {200}
    assert len({answer["endedAt"] for _, answer in results}) == 1
    assert db.session.scalars(select(Engagement.duration_seconds)).all() == [None, 30]


def test_an_event_whose_rows_keep_being_deleted_is_a_503_not_a_500(app, client, monkeypatch):
    # An agent deletes the row the event was going to be stored on, every time
    # it is picked: after a few rounds the API gives up as for any lost race.
    from webapp.engagements import service
    from webapp.reconcile.service import delete_contact

    store = service.store_events

    def store_after_a_delete(contact_id, events, pick):
        delete_contact(contact_id, "agent@example.com")
        return store(contact_id, events, pick)

    monkeypatch.setattr(service, "store_events", store_after_a_delete)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    body = {"channel": "sms", "direction": "inbound", "email": "anna@x.io"}
    response = client.post("/events", json=body)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "busy"
    assert response.headers["Retry-After"] == "1"
    assert count(Engagement) == 0


def test_a_batch_answers_503_only_for_the_customer_that_kept_losing(app, client, monkeypatch):
    from webapp.engagements import service
    from webapp.reconcile.service import delete_contact

    store = service.store_events

    def store_unless_bob(contact_id, events, pick):
        if events[0].values[0].key == "bob@x.io":
            delete_contact(contact_id, "agent@example.com")
        return store(contact_id, events, pick)

    monkeypatch.setattr(service, "store_events", store_unless_bob)
    body = {"events": [{"channel": "web", "email": e} for e in ("anna@x.io", "bob@x.io")]}
    response = client.post("/events/batch", json=body)
    assert response.status_code == 200
    first, second = response.get_json()["results"]
    assert first["status"] == 201
    assert (second["status"], second["error"]["code"]) == (503, "busy")
    assert response.get_json()["stored"] == 1
    assert count(Engagement) == 1


def test_a_database_error_after_a_stored_group_answers_503_for_the_rest_only(
    app, client, monkeypatch
):
    from sqlalchemy import text

    from webapp.engagements import service

    store = service.store_events

    def store_until_bob(contact_id, events, pick):
        if events[0].values[0].key == "bob@x.io":
            # A real error from the real database, as an outage would raise mid-batch.
            db.session.execute(text("SELECT * FROM no_such_table"))
        return store(contact_id, events, pick)

    monkeypatch.setattr(service, "store_events", store_until_bob)
    emails = ("anna@x.io", "bob@x.io", "cleo@x.io")
    body = {"events": [{"channel": "web", "email": e} for e in emails]}
    response = client.post("/events/batch", json=body)
    assert response.status_code == 200
    assert_matches_openapi(app, "/events/batch", "post", response)
    anna, bob, cleo = response.get_json()["results"]
    assert anna["status"] == 201
    # Bob's group failed; cleo's is not tried against a database that just failed.
    for result in (bob, cleo):
        assert (result["status"], result["error"]["code"]) == (503, "database_unavailable")
    assert response.get_json()["stored"] == 1
    assert count(Engagement) == 1
    # When the very first group fails, nothing is stored and the whole batch is a 503.
    body = {"events": [{"channel": "web", "email": e} for e in ("bob@x.io", "dan@x.io")]}
    response = client.post("/events/batch", json=body)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert count(Engagement) == 1


def _block(value: str) -> None:
    from webapp.identity.rules import parse_identifier
    from webapp.reconcile.service import set_blocked

    set_blocked(parse_identifier(value), True, "agent@example.com", "shared till")


def test_an_event_whose_only_value_is_blocked_after_the_row_was_picked_is_refused(
    app, client, monkeypatch
):
    from webapp.engagements import service

    store = service.store_events

    def store_after_a_block(contact_id, events, pick):
        # An agent blocks the e-mail between the pick and the store.
        _block("till@x.io")
        return store(contact_id, events, pick)

    monkeypatch.setattr(service, "store_events", store_after_a_block)
    body = {"channel": "email", "direction": "inbound", "email": "till@x.io", "name": "Till"}
    response = client.post("/events", json=body)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "blocked_identifier"
    assert count(Engagement) == 0


def test_a_call_from_a_number_blocked_after_its_caller_was_found_is_not_filed(
    app, client, monkeypatch
):
    from webapp.engagements import screenpop

    client.post("/identify", json={"email": "anna@x.io", "phoneNumber": "555 0199"})
    store = screenpop.store_events

    def store_after_a_block(contact_id, events, pick, **kwargs):
        _block("555 0199")
        return store(contact_id, events, pick, **kwargs)

    monkeypatch.setattr(screenpop, "store_events", store_after_a_block)
    response = client.post("/calls/incoming", json={"phoneNumber": "5550199", "callId": "c-9"})
    assert response.status_code == 201
    # The answer says what holds now, as the pop does: a blocked number, no call filed.
    body = response.get_json()
    assert (body["eventId"], body["blocked"], body["customerIds"]) == (None, True, [])
    assert count(Engagement) == 0
    # The next call from that number is known to be blocked from the start.
    again = client.post("/calls/incoming", json={"phoneNumber": "5550199", "callId": "c-10"})
    assert (again.get_json()["blocked"], again.get_json()["eventId"]) == (True, None)
