"""Agents at the dashboard race each other and checkout traffic, over a live gunicorn.

Several signed-in agents post the real forms (link, merge, block, unblock,
delete, re-run), each form sent twice at once (a double-click) and once more
afterwards (back and resubmit), while checkout threads post /identify and
whole-database runs follow one another in batches of three. At the end: every
invariant holds, deleted rows reach their customer in one hop, a fresh
whole-database run finds nothing to change, each action that answered "done"
wrote exactly one audit entry and a refused one wrote none, and every audit
entry accounts for every row it names.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
import time
from collections import Counter
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

from sqlalchemy import select

from tests.builders import AGENT_PASSWORD, assert_invariants, contacts, make_agent, post_once
from webapp.extensions import db
from webapp.models import AuditEntry, Contact, Identifier
from webapp.reconcile.jobs import claim_job, create_job, run_job

SECONDS = 10
EMAILS = [f"buyer{i}@x.io" for i in range(40)]
PHONES = [f"+44207011{i:03d}" for i in range(20)]
JUNK = ["+442070999000", "buyer0@x.io", PHONES[0]]
ACTIONS = ("link", "merge", "block", "unblock", "delete", "reconcile")
# Mostly links and merges: the others run out of things to do sooner.
WEIGHTS = (3, 4, 1, 1, 1, 1)
# What a refused or lost form may answer: 404 (deleted already), 409 (needs regrouping),
# 422 (refused in place), 503 (kept losing lock races).
REFUSED = {404, 409, 422, 503}


class Agent:
    """A browser signed in to the dashboard: a session cookie and the CSRF token htmx sends."""

    def __init__(self, url: str, email: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies: dict[str, str] = {}
        page = self.request("GET", "/sign-in", htmx=False)[2]
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        form = {"email": email, "password": AGENT_PASSWORD, "csrf_token": token}
        status = self.request("POST", "/sign-in", form, htmx=False)[0]
        assert status == 302
        home = self.request("GET", "/", htmx=False)[2]
        self.token = re.search(r'"X-CSRFToken": "([^"]+)"', home).group(1)

    def request(self, method: str, path: str, form: dict | None = None, htmx: bool = True):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if htmx:
            headers["HX-Request"] = "true"
        if getattr(self, "token", None):
            headers["X-CSRFToken"] = self.token
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
            for header in response.headers.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(header).items():
                    self.cookies[name] = morsel.value
            return response.status, response.headers, text
        finally:
            conn.close()


def _done(action: str, status: int, headers, text: str) -> bool:
    """Whether the form answered that the action was applied (False: refused)."""
    assert status != 500, text
    if action == "unblock":
        assert status == 200, (status, text)
        return " is unblocked." in text
    if status == 200 and headers.get("HX-Redirect"):
        return True
    assert status in REFUSED, (action, status, text[:300])
    return False


def _snapshot(engine):
    """Live contact ids, primary ids and blocked identifier ids, read on a connection of its own."""
    with engine.connect() as conn:
        rows = conn.execute(select(Contact.id, Contact.linkedId, Contact.deletedAt)).all()
        blocked = conn.execute(
            select(Identifier.id).where(Identifier.blocked_at.is_not(None))
        ).scalars()
        blocked = list(blocked)
    live = [r.id for r in rows if r.deletedAt is None]
    primaries = [r.id for r in rows if r.deletedAt is None and r.linkedId is None]
    return live, primaries, blocked


def _form(action: str, rng: random.Random, engine, serial: int) -> tuple[str, dict] | None:
    live, primaries, blocked = _snapshot(engine)
    if not live:
        return None
    if action == "link":
        choice = rng.random()
        if choice < 0.4:
            values = {"email": rng.choice(EMAILS), "phone": ""}
        elif choice < 0.7:
            values = {"email": f"agent{serial}@x.io", "phone": rng.choice(PHONES)}
        else:
            values = {"email": rng.choice(EMAILS), "phone": rng.choice(PHONES)}
        return f"/customers/{rng.choice(live)}/link", values
    if action == "merge":
        if len(primaries) < 2:
            return None
        first, second = rng.sample(primaries, 2)
        return f"/customers/{first}/merge", {"other": str(second)}
    if action == "block":
        return "/identifiers/block", {"value": rng.choice(JUNK), "reason": "shared by many"}
    if action == "unblock":
        if not blocked:
            return None
        return f"/identifiers/{rng.choice(blocked)}/unblock", {}
    if action == "delete":
        return f"/contacts/{rng.choice(live)}/delete", {"reason": ""}
    return f"/customers/{rng.choice(primaries or live)}/reconcile", {}


def _checkout(url: str, stop: threading.Event, seed: int, answers: list, errors: list) -> None:
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            # Mostly a buyer's own phone, now and then another's: customers to merge stay.
            n = rng.randrange(len(EMAILS))
            phone = PHONES[n // 2] if rng.random() < 0.9 else rng.choice(PHONES)
            body = {"email": rng.choice([EMAILS[n], None]), "phoneNumber": phone}
            answers.append(post_once(url, "/identify", body)[0])
    except BaseException as exc:  # surfaced in the test's thread
        errors.append(exc)


def _agent_loop(agent: Agent, seed: int, engine, stop, done: Counter, errors: list) -> None:
    rng = random.Random(seed)
    serial = seed * 10_000
    try:
        while not stop.is_set():
            serial += 1
            action = rng.choices(ACTIONS, WEIGHTS)[0]
            form = _form(action, rng, engine, serial)
            if form is None:
                continue
            path, data = form
            answers: list = []

            def submit(path=path, data=data, answers=answers) -> None:
                answers.append(agent.request("POST", path, data))

            # A double-click: the same form twice at once, then back and resubmit.
            clicks = [threading.Thread(target=submit) for _ in range(2)]
            for click in clicks:
                click.start()
            for click in clicks:
                click.join()
            submit()
            applied = sum(_done(action, *answer) for answer in answers)
            if action == "delete":
                # A row is deleted once, however often its form is sent.
                assert applied <= 1, (path, [a[0] for a in answers])
            done[action] += applied
    except BaseException as exc:  # surfaced in the test's thread
        errors.append(exc)


def _whole_runs(app, stop: threading.Event, runs: list, errors: list) -> None:
    """Whole-database runs one after another, in small batches, as the dashboard starts them."""
    try:
        with app.app_context():
            while not stop.is_set():
                job = create_job("nightly-run")
                claim_job(job.id)
                finished = run_job(job.id)
                runs.append((finished.status, finished.rows_changed, finished.customers_changed))
    except BaseException as exc:  # surfaced in the test's thread
        errors.append(exc)


def _rows_of(state: dict) -> set[int]:
    return {row for rows in state.get("customers", {}).values() for row in rows}


def _check_audit(done: Counter) -> None:
    db.session.rollback()
    entries = list(db.session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    by_action = Counter(e.action for e in entries if e.actor.startswith("agent"))
    for action in ACTIONS:
        assert by_action[action] == done[action], (action, by_action[action], done[action])
    deleted = {c.id for c in contacts() if c.deletedAt is not None}
    # A value is blocked, unblocked, blocked...: never blocked twice over (a replayed form).
    states: dict[str, str] = {}
    for entry in entries:
        if entry.action in ("block", "unblock"):
            assert states.get(entry.subject, "unblock") != entry.action, (entry.subject, entry.id)
            states[entry.subject] = entry.action
    for entry in entries:
        before, after = json.loads(entry.before or "{}"), json.loads(entry.after or "{}")
        gone = set()
        if entry.action == "delete":
            gone = {int(entry.subject.split()[-1])}
            assert gone <= deleted
        added = {after["added_contact"]} if after.get("added_contact") else set()
        # Every row the entry had before is still in it after, and only those (or added).
        assert _rows_of(before) - gone | added == _rows_of(after), (entry.action, before, after)


def test_agents_double_submitting_forms_against_checkout_traffic_keep_every_invariant(
    app, live_server
):
    engine = db.engine
    make_agent()
    make_agent("agent2@example.com")
    make_agent("agent3@example.com")
    stop = threading.Event()
    answers: list[int] = []
    errors: list[BaseException] = []
    done: Counter = Counter()
    checkout = [
        threading.Thread(target=_checkout, args=(live_server.url, stop, seed, answers, errors))
        for seed in range(6)
    ]
    agents = [
        Agent(live_server.url, email)
        for email in ("agent@example.com", "agent2@example.com", "agent3@example.com")
    ]
    for thread in checkout:
        thread.start()
    deadline = time.monotonic() + 10
    while len(answers) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    app.config["RECONCILE_BATCH_SIZE"] = 3
    runs: list[tuple] = []
    working = [
        threading.Thread(target=_agent_loop, args=(agent, n, engine, stop, done, errors))
        for n, agent in enumerate(agents)
    ]
    working.append(threading.Thread(target=_whole_runs, args=(app, stop, runs, errors)))
    for thread in working:
        thread.start()
    time.sleep(SECONDS)
    stop.set()
    for thread in [*checkout, *working]:
        thread.join()
    assert errors == []
    assert set(answers) <= {200, 422}, Counter(answers)
    assert sum(done.values()) > 10, done
    # Identify and the agents leave every customer as the rules say: no run, not even one
    # racing them, finds anything to change.
    assert runs and set(runs) == {("done", 0, 0)}, runs
    assert_invariants()
    # A deleted row's history (engagements, vouchers) reaches its customer in one hop.
    everything = {c.id: c for c in contacts()}
    for c in everything.values():
        if c.deletedAt is not None and c.linkedId is not None:
            target = everything[c.linkedId]
            # A primary, live or (its customer's last row) deleted: never a secondary.
            assert target.linkedId is None, (c.id, c.linkedId, target.linkedId)
    _check_audit(done)
    job = create_job("system")
    claim_job(job.id)
    finished = run_job(job.id)
    assert (finished.rows_changed, finished.customers_changed) == (0, 0)
