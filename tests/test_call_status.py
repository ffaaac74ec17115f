"""POST /calls/status (a call that rang was answered or ended) and what it does to the pops.

Every test runs on SQLite and on MariaDB. The browser side (a pop fading out, one
kept while the agent is in it) is in tests/browser/test_screenpop_browser.py.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.builders import AGENT_EMAIL, identify, statements_run
from tests.openapi_check import assert_matches_openapi
from webapp.engagements.models import Engagement, ScreenPop
from webapp.engagements.screenpop import MAX_SHOWN, parse_shown, recent_pops
from webapp.extensions import db
from webapp.models import utcnow

ANNA = "anna@example.com"
ANNAS_PHONE = "+1 555 0100"


def ring(client, call_id: str, phone: str = ANNAS_PHONE) -> dict:
    response = client.post("/calls/incoming", json={"phoneNumber": phone, "callId": call_id})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def status(client, call_id: str, state: str, **extra):
    return client.post("/calls/status", json={"callId": call_id, "status": state, **extra})


def ok(app, response) -> dict:
    assert response.status_code == 200, response.get_json()
    assert_matches_openapi(app, "/calls/status", "post", response)
    return response.get_json()


def pop_row(pop_id: int) -> ScreenPop:
    pop = db.session.get(ScreenPop, pop_id)
    db.session.expunge(pop)
    db.session.rollback()
    return pop


def backdate(pop_id: int, seconds: float, *columns: str) -> None:
    """Move the pop's times (``columns`` of it, every one set by default) into the past."""
    pop = db.session.get(ScreenPop, pop_id)
    for column in columns or ("created_at", "answered_at", "ended_at"):
        if getattr(pop, column) is not None:
            setattr(pop, column, getattr(pop, column) - timedelta(seconds=seconds))
    db.session.commit()


def call_event_duration(event_id: int) -> int | None:
    duration = db.session.scalar(
        select(Engagement.duration_seconds).where(Engagement.id == event_id)
    )
    db.session.rollback()
    return duration


# The webhook


def test_an_answered_then_ended_call_keeps_both_times_and_files_its_length(app, client):
    identify(client, ANNA, ANNAS_PHONE)
    rang = ring(client, "c-1")
    answered = ok(app, status(client, "c-1", "answered", agent=" Agent@Example.com "))
    assert answered["popId"] == rang["popId"]
    assert answered["eventId"] == rang["eventId"]
    assert (answered["status"], answered["answeredBy"], answered["endedAt"]) == (
        "answered",
        AGENT_EMAIL,
        None,
    )
    assert answered["durationSeconds"] is None
    # The customer talked for 190 s.
    backdate(rang["popId"], 190, "answered_at")
    ended = ok(app, status(client, "c-1", "ended"))
    assert (ended["status"], ended["durationSeconds"], ended["callId"]) == ("ended", 190, "c-1")
    assert ended["answeredAt"] < ended["endedAt"]
    pop = pop_row(rang["popId"])
    assert (pop.answered_by, pop.duration_seconds) == (AGENT_EMAIL, None)
    assert pop.ended_at is not None
    # The call event holds the length, as one posted with durationSeconds does; the
    # customer's activity and the lookup show it.
    assert call_event_duration(rang["eventId"]) == 190


def test_the_phone_systems_own_count_of_the_length_wins(app, client):
    identify(client, ANNA, ANNAS_PHONE)
    rang = ring(client, "c-2")
    ok(app, status(client, "c-2", "answered"))
    backdate(rang["popId"], 190, "answered_at")
    ended = ok(app, status(client, "c-2", "ended", durationSeconds=187.0))
    assert ended["durationSeconds"] == 187
    assert call_event_duration(rang["eventId"]) == 187


def test_a_call_that_ended_unanswered_has_no_length_until_the_phone_system_sends_one(app, client):
    identify(client, ANNA, ANNAS_PHONE)
    rang = ring(client, "c-3")
    first = ok(app, status(client, "c-3", "ended"))
    assert (first["answeredAt"], first["durationSeconds"]) == (None, None)
    assert call_event_duration(rang["eventId"]) is None
    # A repeat that brings what was not said yet fills it in; the end keeps its time.
    again = ok(app, status(client, "c-3", "ended", durationSeconds=0))
    assert (again["endedAt"], again["durationSeconds"]) == (first["endedAt"], 0)
    assert call_event_duration(rang["eventId"]) == 0


def test_repeats_change_nothing_and_fill_in_only_what_was_not_said(app, client):
    ring(client, "c-4")
    first = ok(app, status(client, "c-4", "answered"))
    assert first["answeredBy"] is None
    again = ok(app, status(client, "c-4", "answered", agent=AGENT_EMAIL))
    assert (again["answeredAt"], again["answeredBy"]) == (first["answeredAt"], AGENT_EMAIL)
    assert ok(app, status(client, "c-4", "answered", agent=AGENT_EMAIL)) == again
    # Without the agent, a repeat says less, not otherwise.
    assert ok(app, status(client, "c-4", "answered")) == again

    # Another agent: refused, naming the field, and nothing changes.
    other = status(client, "c-4", "answered", agent="someone@example.com")
    assert other.status_code == 422
    assert_matches_openapi(app, "/calls/status", "post", other)
    assert other.get_json()["error"]["code"] == "call_status_conflict"
    assert set(other.get_json()["error"]["fields"]) == {"agent"}
    assert pop_row(again["popId"]).answered_by == AGENT_EMAIL

    ended = ok(app, status(client, "c-4", "ended", durationSeconds=42))
    assert ok(app, status(client, "c-4", "ended")) == ended
    assert ok(app, status(client, "c-4", "ended", durationSeconds=42)) == ended
    longer = status(client, "c-4", "ended", durationSeconds=43)
    assert longer.status_code == 422
    assert set(longer.get_json()["error"]["fields"]) == {"durationSeconds"}
    # An answer that arrives after the end (a retry delayed past the hang-up) changes nothing.
    assert ok(app, status(client, "c-4", "answered", agent=AGENT_EMAIL)) == ended


def test_an_answer_after_the_end_records_no_answer(app, client):
    ring(client, "c-5")
    ended = ok(app, status(client, "c-5", "ended"))
    late = ok(app, status(client, "c-5", "answered", agent=AGENT_EMAIL))
    assert late == ended
    assert (late["answeredAt"], late["answeredBy"]) == (None, None)


def test_a_call_id_no_call_rang_with_is_404_and_stores_nothing(app, client):
    ring(client, "c-6")
    response = status(client, "c-7", "ended")
    assert response.status_code == 404
    assert_matches_openapi(app, "/calls/status", "post", response)
    error = response.get_json()["error"]
    assert (error["code"], error["fields"]) == ("not_found", {"callId": "no call rang with it"})
    assert "POST /calls/incoming" in error["message"]
    pops = db.session.scalars(select(ScreenPop)).all()
    assert [(p.call_id, p.answered_at, p.ended_at) for p in pops] == [("c-6", None, None)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "ended"}, "callId"),
        ({"callId": "  ", "status": "ended"}, "callId"),
        ({"callId": 4711, "status": "ended"}, "callId"),
        ({"callId": "c\u202e1", "status": "ended"}, "callId"),
        ({"callId": "c" * 201, "status": "ended"}, "callId"),
        ({"callId": "c-1"}, "status"),
        ({"callId": "c-1", "status": "hung up"}, "status"),
        ({"callId": "c-1", "status": ["ended"]}, "status"),
        ({"callId": "c-1", "status": "ANSWERED"}, "status"),
        ({"callId": "c-1", "status": "ended", "agent": AGENT_EMAIL}, "agent"),
        ({"callId": "c-1", "status": "answered", "agent": "extension 201"}, "agent"),
        ({"callId": "c-1", "status": "answered", "agent": 201}, "agent"),
        ({"callId": "c-1", "status": "answered", "durationSeconds": 10}, "durationSeconds"),
        ({"callId": "c-1", "status": "ended", "durationSeconds": -1}, "durationSeconds"),
        ({"callId": "c-1", "status": "ended", "durationSeconds": 1.5}, "durationSeconds"),
        ({"callId": "c-1", "status": "ended", "durationSeconds": "10"}, "durationSeconds"),
        ({"callId": "c-1", "status": "ended", "durationSeconds": True}, "durationSeconds"),
        ({"callId": "c-1", "status": "ended", "durationSeconds": 2**31}, "durationSeconds"),
    ],
)
def test_a_bad_status_is_400_naming_the_field_and_changes_nothing(app, client, body, field):
    ring(client, "c-1")
    response = client.post("/calls/status", json=body)
    assert response.status_code == 400
    assert_matches_openapi(app, "/calls/status", "post", response)
    error = response.get_json()["error"]
    assert (error["code"], set(error["fields"])) == ("invalid_field", {field})
    pop = db.session.scalars(select(ScreenPop)).one()
    assert (pop.answered_at, pop.ended_at, pop.duration_seconds) == (None, None, None)


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("not json", "application/json", 400),
        ("[]", "application/json", 400),
        ("{}", "text/plain", 415),
    ],
)
def test_a_body_that_is_no_json_object_is_a_clear_error(app, client, data, content_type, status):
    response = client.post("/calls/status", data=data, content_type=content_type)
    assert response.status_code == status
    assert_matches_openapi(app, "/calls/status", "post", response)


def test_an_unknown_callers_call_that_ended_is_filed_with_its_length_when_created(
    signed_in_client, app
):
    rang = ring(signed_in_client, "c-8", phone="+44 20 7946 0000")
    assert rang["eventId"] is None
    ok(app, status(signed_in_client, "c-8", "answered"))
    backdate(rang["popId"], 65, "answered_at")
    assert ok(app, status(signed_in_client, "c-8", "ended"))["durationSeconds"] == 65
    # An agent makes the caller a customer from the pop afterwards: the call is filed with
    # the length it had.
    assert signed_in_client.post(f"/screen-pops/{rang['popId']}/customer").status_code == 303
    event_id = pop_row(rang["popId"]).engagement_id
    assert call_event_duration(event_id) == 65
    assert ok(app, status(signed_in_client, "c-8", "ended"))["eventId"] == event_id


def test_a_ring_retried_after_the_end_answers_its_call_event(app, client):
    # The call event holds a length now, which the retry does not send: it is still the
    # same call, not another event under its call id.
    identify(client, ANNA, ANNAS_PHONE)
    rang = ring(client, "c-9")
    ok(app, status(client, "c-9", "ended", durationSeconds=30))
    again = ring(client, "c-9")
    assert (again["popId"], again["eventId"]) == (rang["popId"], rang["eventId"])
    assert db.session.scalars(select(Engagement.duration_seconds)).all() == [30]


# The pops on agents' screens


def pop_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<article class="screen-pop" data-pop-id="(\d+)"', html)]


def updates(html: str) -> dict[int, str]:
    """{pop id: new state} of the changes a poll answer carries for pops the page shows."""
    found = re.findall(r'class="screen-pop-update" data-pop-id="(\d+)" data-state="(\w+)"', html)
    return {int(pop_id): state for pop_id, state in found}


def poll(client, shown: dict[int, str] | None = None, after: int | None = None):
    query = {}
    if after is not None:
        query["after"] = after
    if shown:
        query["shown"] = ",".join(f"{pop_id}:{state}" for pop_id, state in shown.items())
    return client.get("/screen-pops", query_string=query)


def test_a_pop_the_page_shows_is_told_its_call_was_answered_and_ended(app, signed_in_client):
    pop_id = ring(signed_in_client, "c-10")["popId"]
    first = poll(signed_in_client)
    assert pop_ids(first.get_data(as_text=True)) == [pop_id]
    assert 'data-state="ringing"' in first.get_data(as_text=True)
    # The page polls on past the call, which stays on it.
    cursor = pop_id
    # Nothing changed: a quiet poll.
    assert poll(signed_in_client, {pop_id: "ringing"}, after=cursor).status_code == 204

    ok(app, status(signed_in_client, "c-10", "answered"))
    answered = poll(signed_in_client, {pop_id: "ringing"}, after=cursor)
    html = answered.get_data(as_text=True)
    assert answered.status_code == 200
    assert updates(html) == {pop_id: "answered"}
    assert pop_ids(html) == []
    assert "<strong>Answered</strong>" in html
    # The page shows it answered now: nothing more to say until the call ends.
    assert poll(signed_in_client, {pop_id: "answered"}, after=cursor).status_code == 204

    backdate(pop_id, 130, "answered_at")
    ok(app, status(signed_in_client, "c-10", "ended"))
    html = poll(signed_in_client, {pop_id: "answered"}, after=cursor).get_data(as_text=True)
    assert updates(html) == {pop_id: "ended"}
    assert "<strong>Call ended</strong>" in html
    assert " · 2 min 10 s" in html


def test_a_call_answered_by_one_agent_leaves_the_others_and_stays_marked_for_them(
    app, signed_in_client
):
    mine = ring(signed_in_client, "c-11")["popId"]
    theirs = ring(signed_in_client, "c-12", phone="+1 555 0101")["popId"]
    shown = {mine: "ringing", theirs: "ringing"}
    ok(app, status(signed_in_client, "c-11", "answered", agent=AGENT_EMAIL.upper()))
    ok(app, status(signed_in_client, "c-12", "answered", agent="dana@support.example"))
    html = poll(signed_in_client, shown, after=theirs).get_data(as_text=True)
    assert updates(html) == {mine: "yours", theirs: "taken"}
    assert "<strong>You answered</strong>" in html
    assert "<strong>Answered by dana@support.example</strong>" in html
    # A page opened now pops the call this agent is on, marked, and not the other one.
    opened = poll(signed_in_client).get_data(as_text=True)
    assert pop_ids(opened) == [mine]
    assert f'data-pop-id="{mine}" data-state="yours"' in opened
    assert "<strong>You answered</strong>" in opened
    # Both end: the note says who answered.
    ok(app, status(signed_in_client, "c-11", "ended"))
    html = poll(signed_in_client, {mine: "yours"}, after=theirs).get_data(as_text=True)
    assert updates(html) == {mine: "ended"}
    assert "· answered by you" in html


def test_a_pop_sent_whole_again_is_told_its_change_too(app, signed_in_client):
    # The page keeps the pop the keyboard is in rather than replace it with the one sent
    # again (younger than POP_SETTLE): the change reaches that one as a note.
    pop_id = ring(signed_in_client, "c-20")["popId"]
    ok(app, status(signed_in_client, "c-20", "answered", agent=AGENT_EMAIL))
    html = poll(signed_in_client, {pop_id: "ringing"}, after=0).get_data(as_text=True)
    assert pop_ids(html) == [pop_id]
    assert updates(html) == {pop_id: "yours"}


def test_a_call_that_ended_or_was_answered_no_longer_pops_up(app, signed_in_client):
    ended = ring(signed_in_client, "c-13")["popId"]
    answered = ring(signed_in_client, "c-14", phone="+1 555 0101")["popId"]
    ringing = ring(signed_in_client, "c-15", phone="+1 555 0102")["popId"]
    ok(app, status(signed_in_client, "c-13", "ended"))
    ok(app, status(signed_in_client, "c-14", "answered"))
    assert pop_ids(poll(signed_in_client).get_data(as_text=True)) == [ringing]
    assert pop_ids(poll(signed_in_client, after=0).get_data(as_text=True)) == [ringing]
    assert [pop.id for pop in recent_pops(None)[0]] == [ringing]
    assert ended < answered < ringing


def test_a_pop_no_one_said_ended_times_out(app, signed_in_client):
    pop_id = ring(signed_in_client, "c-16")["popId"]
    answered = ring(signed_in_client, "c-17", phone="+1 555 0101")["popId"]
    ok(app, status(signed_in_client, "c-17", "answered"))
    shown = {pop_id: "ringing", answered: "answered"}
    assert app.config["SCREEN_POP_TIMEOUT_S"] == 300
    backdate(pop_id, 299)
    backdate(answered, 299)
    assert poll(signed_in_client, shown, after=answered).status_code == 204
    backdate(pop_id, 2)
    backdate(answered, 2)
    html = poll(signed_in_client, shown, after=answered).get_data(as_text=True)
    # Answered or not, the phone system never said the call ended.
    assert updates(html) == {pop_id: "stale", answered: "stale"}
    assert "<strong>Answered</strong>" in html
    # The page shows them timed out (kept by an agent who clicked in them): nothing more.
    stale = {pop_id: "stale", answered: "stale"}
    assert poll(signed_in_client, stale, after=answered).status_code == 204
    # A call that times out does not pop up on a page opened later, even when the
    # timeout is shorter than the minute a call pops up for.
    app.config["SCREEN_POP_TIMEOUT_S"] = 5
    late = ring(signed_in_client, "c-18", phone="+1 555 0102")["popId"]
    assert pop_ids(poll(signed_in_client).get_data(as_text=True)) == [late]
    backdate(late, 6)
    assert poll(signed_in_client).status_code == 204
    # Set to 0, pops never time out.
    app.config["SCREEN_POP_TIMEOUT_S"] = 0
    assert poll(signed_in_client, {pop_id: "ringing"}, after=late).status_code == 204


def test_the_page_s_list_of_pops_is_read_leniently_and_at_most_a_hundred_deep():
    assert parse_shown("12:ringing,13:answered") == {12: "ringing", 13: "answered"}
    assert parse_shown(None) == {}
    for damaged in (
        "12",
        "x:ringing",
        "12:ringin",
        "-1:ended",
        "\uff11\uff12:ended",
        f"{2**63}:ended",
        "9" * 5000 + ":ended",
    ):
        assert parse_shown(damaged) == {}, damaged
    assert parse_shown(f"{2**63 - 1}:ended") == {2**63 - 1: "ended"}
    many = ",".join(f"{n}:ringing" for n in range(MAX_SHOWN + 5))
    assert len(parse_shown(many)) == MAX_SHOWN


def test_a_damaged_list_of_pops_shown_makes_a_quiet_poll(signed_in_client):
    pop_id = ring(signed_in_client, "c-19")["popId"]
    backdate(pop_id, 10)
    cursor = poll(signed_in_client).headers["X-Screen-Pop-Cursor"]
    for shown in ("nonsense", f"{pop_id}:bogus", "99999:ringing", f"{pop_id}:ringing,,"):
        response = signed_in_client.get(f"/screen-pops?after={cursor}&shown={shown}")
        assert response.status_code == 204, shown


def test_many_pops_shown_are_checked_in_one_read(app, signed_in_client):
    ids = [ring(signed_in_client, f"m-{n}", phone=f"+1 555 02{n:02d}")["popId"] for n in range(30)]
    for call in range(0, 30, 2):
        ok(app, status(signed_in_client, f"m-{call}", "ended"))
    db.session.execute(update(ScreenPop).values(created_at=utcnow() - timedelta(seconds=90)))
    db.session.commit()
    with statements_run() as few:
        html = poll(signed_in_client, dict.fromkeys(ids[:2], "ringing"), after=ids[-1])
    assert updates(html.get_data(as_text=True)) == {ids[0]: "ended"}
    with statements_run() as many:
        html = poll(signed_in_client, dict.fromkeys(ids, "ringing"), after=ids[-1])
    assert updates(html.get_data(as_text=True)) == dict.fromkeys(ids[::2], "ended")
    assert len(many) == len(few), (few, many)
