"""Reconciliation services on SQLite and MariaDB: what each action writes, audits and refuses."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError

from tests.builders import assert_invariants, contacts, one_phone_customer
from tests.openapi_check import assert_matches_openapi
from webapp.extensions import db
from webapp.identity.rules import parse_email, parse_identifier, parse_phone
from webapp.identity.service import BlockedValues, blocked_keys, identify, lock_keys
from webapp.models import AuditCustomer, AuditEntry, BondKey, Contact, Identifier, Merge, utcnow
from webapp.reconcile.core import NotFound, ReconcileError
from webapp.reconcile.jobs import AlreadyRunning, claim_job, create_job, run_job
from webapp.reconcile.models import DONE, FAILED, ReconcileJob
from webapp.reconcile.service import (
    customer_snapshot,
    delete_contact,
    link_values,
    merge_customers,
    merge_preview,
    reconcile_customer,
    set_blocked,
)

AGENT = "agent@example.com"


def ident(email=None, phone=None):
    """Identify through the real service, as checkout does."""
    values = [parse_email(email)] if email else []
    values += [parse_phone(phone)] if phone else []
    return identify(values)


def links():
    """{row id: linkedId} of every row, deleted or not."""
    db.session.expire_all()
    return {c.id: c.linkedId for c in contacts()}


def audits(action):
    return list(db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def customers_in(state):
    """An audit state's customers, as {primary id: row ids} with int keys."""
    return {int(k): v for k, v in json.loads(state)["customers"].items()}


def merges():
    return list(db.session.scalars(select(Merge).order_by(Merge.id)))


def shop_customer():
    """Two shoppers joined only through the shop's own phone: rows 1 and 2."""
    ident("ann@x.io", "555")
    ident("bob@x.io", "555")
    assert links() == {1: None, 2: 1}


def test_blocking_a_shared_value_splits_the_customers_it_joined(app):
    shop_customer()
    outcome = set_blocked(parse_identifier("5-5-5"), True, AGENT, "the shop's own phone")
    assert links() == {1: None, 2: None}
    assert outcome.customer_id == 1
    assert [r.row_id for r in outcome.relinks] == [2]
    assert outcome.before == {1: [1, 2]}
    # What customer 1 kept, and the customer split off.
    assert outcome.after == {1: [1], 2: [2]}
    claim = db.session.scalar(select(Identifier).where(Identifier.key == "555"))
    assert (claim.blocked_by, claim.blocked_reason) == (AGENT, "the shop's own phone")
    assert claim.blocked_at is not None
    (entry,) = audits("block")
    assert (entry.actor, entry.customer_id, entry.subject) == (AGENT, 1, "phone 555")
    assert json.loads(entry.before)["customers"] == {"1": [1, 2]}
    assert json.loads(entry.after)["customers"] == {"1": [1], "2": [2]}
    assert_invariants()


def test_identify_ignores_a_blocked_value_and_refuses_a_request_of_only_blocked_values(app):
    shop_customer()
    set_blocked(parse_identifier("555"), True, AGENT, "shop phone")
    customer = ident("cat@x.io", "555")
    assert customer.primary_id == 3
    assert customer.phone_numbers == []
    new = db.session.get(Contact, 3)
    assert (new.email, new.phoneNumber, new.phone_key, new.linkedId) == (
        "cat@x.io",
        None,
        None,
        None,
    )
    with pytest.raises(BlockedValues):
        ident(phone="555")
    assert len(contacts()) == 3
    assert_invariants()


def test_unblocking_joins_again_what_the_rules_say(app):
    shop_customer()
    set_blocked(parse_identifier("555"), True, AGENT, "shop phone")
    outcome = set_blocked(parse_identifier("555"), False, AGENT)
    assert links() == {1: None, 2: 1}
    assert [(m.survivor_id, m.absorbed_id, m.cause, m.actor) for m in merges()] == [
        (1, 2, "agent", AGENT)
    ]
    assert outcome.merges[0].survivor_id == 1
    claim = db.session.scalar(select(Identifier).where(Identifier.key == "555"))
    assert (claim.blocked_at, claim.blocked_by, claim.blocked_reason) == (None, None, None)
    (entry,) = audits("unblock")
    assert json.loads(entry.before)["blocked_reason"] == "shop phone"
    assert_invariants()


@pytest.mark.parametrize(
    ("blocked", "unblocked", "message"),
    [(True, True, "already blocked"), (False, False, "not blocked")],
)
def test_blocking_twice_or_unblocking_a_free_value_is_refused(app, blocked, unblocked, message):
    shop_customer()
    value = parse_identifier("555")
    if blocked:
        set_blocked(value, True, AGENT, "shop")
    with pytest.raises(ReconcileError, match=message):
        set_blocked(value, unblocked, AGENT, "again")
    assert len(audits("block")) == int(blocked)


def test_blocking_needs_a_reason_and_writes_nothing_without_one(app):
    shop_customer()
    with pytest.raises(ReconcileError, match="why"):
        set_blocked(parse_identifier("555"), True, AGENT, "  ")
    assert db.session.scalar(select(func.count()).where(Identifier.blocked_at.is_not(None))) == 0


def test_a_value_never_seen_can_be_blocked_ahead(app):
    outcome = set_blocked(parse_identifier("Test@Test.com"), True, AGENT, "test address")
    assert outcome.customer_id is None
    with pytest.raises(BlockedValues):
        ident("test@test.com")
    assert contacts() == []


def test_a_merge_bridged_by_a_request_survives_reconciliation_and_a_block_undoes_it(app):
    ident("ann@x.io", "111")
    ident("bob@x.io", "222")
    ident("ann@x.io", "222")  # bridges the two customers without adding a row
    assert links() == {1: None, 2: 1}
    assert not reconcile_customer(2, AGENT).changed
    assert links() == {1: None, 2: 1}
    set_blocked(parse_identifier("ann@x.io"), True, AGENT, "shared family address")
    assert links() == {1: None, 2: None}
    assert_invariants()


def test_link_adds_an_agent_row_that_stays_after_reconciliation(app):
    ident("ann@x.io", "111")
    outcome = link_values(1, [parse_email("ann.work@y.io")], AGENT)
    assert outcome.added_row == 2
    added = db.session.get(Contact, 2)
    assert (added.source, added.linkedId, added.email_key) == ("agent", 1, "ann.work@y.io")
    assert not reconcile_customer(1, AGENT).changed
    assert links() == {1: None, 2: 1}
    (entry,) = audits("link")
    assert customers_in(entry.before) == {1: [1]}
    assert json.loads(entry.after) == {"added_contact": 2, "customers": {"1": [1, 2]}}
    assert_invariants()


def test_link_of_a_value_another_customer_holds_merges_into_the_older(app):
    ident("ann@x.io", "111")
    ident("bob@x.io", "222")
    outcome = link_values(2, [parse_phone("111")], AGENT)
    assert outcome.added_row is None
    assert outcome.customer_id == 1
    assert links() == {1: None, 2: 1}
    assert [(m.survivor_id, m.absorbed_id, m.cause, m.actor) for m in merges()] == [
        (1, 2, "agent", AGENT)
    ]
    assert not reconcile_customer(1, AGENT).changed
    assert_invariants()


def test_link_and_merge_audit_every_customer_involved_as_it_was(app):
    ident("a@x.io", "111")
    ident("b@x.io", "222")
    # Linking c@x.io and phone 111 to customer 2 adds row 3 and merges customer 2 into 1.
    outcome = link_values(2, [parse_email("c@x.io"), parse_phone("111")], AGENT)
    assert (outcome.added_row, outcome.customer_id) == (3, 1)
    assert links() == {1: None, 2: 1, 3: 1}
    (entry,) = audits("link")
    # Row 3 did not exist before the link; customer 1 took customer 2 in.
    assert customers_in(entry.before) == {1: [1], 2: [2]}
    assert json.loads(entry.after) == {"added_contact": 3, "customers": {"1": [1, 2, 3]}}
    ident("d@x.io", "444")
    merge_customers(1, 4, AGENT)
    (entry,) = audits("merge")
    assert customers_in(entry.before) == {1: [1, 2, 3], 4: [4]}
    assert customers_in(entry.after) == {1: [1, 2, 3, 4]}
    assert_invariants()


def test_unblocking_audits_the_customer_merged_into_as_it_was(app):
    shop_customer()
    set_blocked(parse_identifier("555"), True, AGENT, "shop phone")
    outcome = set_blocked(parse_identifier("555"), False, AGENT)
    assert outcome.before == {1: [1], 2: [2]}
    (entry,) = audits("unblock")
    assert customers_in(entry.before) == {1: [1], 2: [2]}
    assert customers_in(entry.after) == {1: [1, 2]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["ann@x.io"], "already has"),
        (["555"], "blocked"),
        ([], "enter"),
    ],
)
def test_link_refusals_write_nothing(app, values, message):
    ident("ann@x.io", "111")
    set_blocked(parse_identifier("555"), True, AGENT, "shop")
    before = len(contacts())
    with pytest.raises(ReconcileError, match=message):
        link_values(1, [parse_identifier(v) for v in values], AGENT)
    assert len(contacts()) == before
    assert audits("link") == []


def test_link_to_a_missing_contact_is_not_found(app):
    with pytest.raises(NotFound):
        link_values(99, [parse_email("a@x.io")], AGENT)


def test_merge_preview_and_merge(app):
    ident("ann@x.io", "111")
    ident("bob@x.io", "222")
    ident("bob@x.io", "333")
    preview = merge_preview(3, 1)
    assert (preview.survivor.primary_id, preview.absorbed.primary_id) == (1, 2)
    assert preview.rows_moved == 2
    outcome = merge_customers(3, 1, AGENT)
    assert outcome.customer_id == 1
    assert links() == {1: None, 2: 1, 3: 1}
    assert [(m.survivor_id, m.absorbed_id, m.rows_moved, m.cause) for m in merges()] == [
        (1, 2, 2, "agent")
    ]
    (entry,) = audits("merge")
    assert (entry.actor, entry.customer_id) == (AGENT, 1)
    # The agent's merge is kept through a whole recomputation.
    assert not reconcile_customer(1, AGENT).changed
    assert_invariants()


def test_merging_a_customer_with_itself_is_refused(app):
    ident("ann@x.io", "111")
    ident("ann@x.io", "222")
    with pytest.raises(ReconcileError, match="already"):
        merge_preview(1, 2)
    with pytest.raises(ReconcileError, match="already"):
        merge_customers(1, 2, AGENT)
    assert merges() == []


def test_linking_to_a_customer_whose_primary_row_holds_only_blocked_values_is_refused(app):
    ident("junk@x.io")
    ident("bob@x.io", "222")
    set_blocked(parse_identifier("junk@x.io"), True, AGENT, "test address")
    before = (links(), len(audits("link")))
    for values in ([parse_phone("111")], [parse_email("bob@x.io")]):
        with pytest.raises(ReconcileError, match="holds only blocked values"):
            link_values(1, values, AGENT)
        assert (links(), len(audits("link"))) == before
    assert_invariants()


def test_a_customer_merged_away_between_the_dialogs_two_reads_is_a_refusal_not_a_crash(
    app, monkeypatch
):
    from webapp.reconcile import service

    ident("ann@x.io", "111")
    ident("bob@x.io", "222")
    ident("ann@x.io", "222")  # merges customer 2 into customer 1
    assert links() == {1: None, 2: 1}
    # As MariaDB at READ COMMITTED can show it: the first read still saw customer 2
    # as a primary, the second reads after the merge committed.
    monkeypatch.setattr(service, "live_customer_of", lambda conn, contact_id: contact_id)
    with pytest.raises(ReconcileError, match="changed while it was read"):
        customer_snapshot(2)
    with pytest.raises(ReconcileError, match="changed while it was read"):
        merge_preview(1, 2)


def test_a_block_finds_a_holder_another_agent_split_off_after_it_looked(app, monkeypatch):
    from webapp.reconcile import service

    for email, phone in (("a@x.io", "1"), ("b@x.io", "1"), ("b@x.io", "2"), ("c@x.io", "2")):
        ident(email, phone)
    assert set(links().values()) == {None, 1}
    # Agent B looks up who holds phone 2 (customer 1), then waits for customer 1's lock
    # while agent A blocks b@x.io, which splits rows 3 and 4 off as customer 3.
    looked_up = service.holders(db.session.connection(), [("phone", "2")])
    db.session.rollback()
    set_blocked(parse_identifier("b@x.io"), True, AGENT, "shared inbox")
    assert links() == {1: None, 2: 1, 3: None, 4: 3}
    calls = []

    def as_looked_up_before(conn, keys):
        calls.append(keys)
        return looked_up if len(calls) == 1 else holders(conn, keys)

    holders = service.holders
    monkeypatch.setattr(service, "holders", as_looked_up_before)
    outcome = set_blocked(parse_identifier("2"), True, AGENT, "shop phone")
    # Rows 3 and 4 were joined only by phone 2: they split, as a whole-database run would.
    assert links() == {1: None, 2: 1, 3: None, 4: None}
    assert outcome.changed
    assert_invariants()


def test_deleting_the_primary_promotes_the_next_oldest(app):
    ident("ann@x.io", "111")
    ident("ann@x.io", "222")
    ident("bob@x.io", "222")
    outcome = delete_contact(1, AGENT, "duplicate")
    assert outcome.customer_id == 2
    assert links() == {1: 2, 2: None, 3: 2}
    # What the confirmation promised, not "1 new customer split off".
    assert outcome.summary() == "Contact 2 became the primary; 2 contact rows relinked."
    assert db.session.get(Contact, 1).deletedAt is not None
    (entry,) = audits("delete")
    assert (entry.subject, entry.reason) == ("contact 1", "duplicate")
    assert customers_in(entry.before) == {1: [1, 2, 3]}
    assert customers_in(entry.after) == {2: [2, 3]}
    assert_invariants()


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [
        (lambda: delete_contact(2, AGENT), {1: [1, 2]}, {1: [1]}),
        (lambda: delete_contact(1, AGENT), {1: [1, 2]}, {2: [2]}),
        (lambda: reconcile_customer(2, AGENT), {1: [1, 2]}, {1: [1, 2]}),
    ],
    ids=["delete-a-secondary", "delete-the-primary", "reconcile-changes-nothing"],
)
def test_an_action_that_moves_no_row_still_audits_the_customer_after(app, action, before, after):
    ident("ann@x.io", "111")
    ident("ann@x.io", "222")
    outcome = action()
    (entry,) = db.session.scalars(select(AuditEntry))
    assert outcome.before == customers_in(entry.before) == before
    assert outcome.after == customers_in(entry.after) == after


def test_deleting_the_only_bridge_splits_the_customer(app):
    ident("ann@x.io", "111")
    ident("ann@x.io", "222")
    ident("bob@x.io", "222")
    outcome = delete_contact(2, AGENT)
    assert links() == {1: None, 2: 1, 3: None}
    assert outcome.customer_id == 1
    assert outcome.before == {1: [1, 2, 3]}
    assert outcome.after == {1: [1], 3: [3]}
    assert outcome.summary() == "1 new customer split off; 1 contact row relinked."
    with pytest.raises(NotFound):
        delete_contact(2, AGENT)
    assert_invariants()


# Row locks are MariaDB's: on SQLite BEGIN IMMEDIATE already runs one delete after the other.
@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_two_agents_deleting_the_last_holders_of_a_blocked_value_withdraw_it_from_bonds(
    app, dialect
):
    ident("ann@x.io", "555")
    ident("bob@x.io", "777")
    ident("bob@x.io", "555")  # merges the two: a bond holds bob@x.io and 555
    ident("cat@x.io", "555")
    set_blocked(parse_identifier("555"), True, AGENT, "shop phone")
    # Rows 1 and 3 hold the blocked 555 as two customers of their own.
    assert links() == {1: None, 2: None, 3: None}
    bonded = select(func.count()).select_from(BondKey).where(BondKey.key == "555")
    assert db.session.scalar(bonded) == 1
    db.session.rollback()
    with db.engine.connect() as first:
        # Agent A deletes row 1, not committed yet: it holds 555's claim, as a delete takes it.
        first.begin()
        lock_keys(first, [("phone", "555")])
        first.execute(update(Contact).where(Contact.id == 1).values(deletedAt=utcnow()))
        outcomes = []

        def agent_b():
            with app.app_context():
                outcomes.append(delete_contact(3, AGENT, "test row"))

        deleting = threading.Thread(target=agent_b)
        deleting.start()
        deleting.join(timeout=2)
        # Agent B waits for the claim instead of reading row 1 as still live...
        assert deleting.is_alive()
        first.commit()
    deleting.join(timeout=30)
    assert len(outcomes) == 1
    # ...so it sees that no live row holds 555 any more and takes it out of the bond.
    assert db.session.scalar(bonded) == 0
    assert_invariants()


def _corrupt():
    """Rows the way a bug or a manual SQL fix could leave them; reconciliation repairs them."""
    now = utcnow()
    table = Contact.__table__
    db.session.execute(
        insert(table),
        [
            {
                "id": i,
                "email": e,
                "email_key": e,
                "phoneNumber": p,
                "phone_key": p,
                "linkedId": None,
                "linkPrecedence": "primary",
                "createdAt": now,
                "updatedAt": now,
            }
            for i, e, p in [
                (1, "a@x.io", "1"),
                (2, "a@x.io", "2"),  # a second primary holding a@x.io
                (3, "c@x.io", "3"),
                (4, "d@x.io", "4"),
                (5, "e@x.io", "5"),
            ]
        ],
    )
    db.session.execute(
        update(table).where(table.c.id == 4).values(linkedId=3, linkPrecedence="secondary")
    )
    # Row 5 hangs off a secondary (two hops) and shares nothing with anyone.
    db.session.execute(
        update(table).where(table.c.id == 5).values(linkedId=4, linkPrecedence="secondary")
    )
    db.session.commit()


def test_a_whole_database_run_repairs_everything_in_small_batches(app):
    app.config["RECONCILE_BATCH_SIZE"] = 1
    _corrupt()
    job = create_job(AGENT)
    with pytest.raises(AlreadyRunning):
        create_job(AGENT)
    # Customers 1, 2 and 3, and 4, which row 5 points at though it is a secondary.
    assert claim_job(job.id).total == 4
    seen = []
    done = run_job(job.id, progress=seen.append)
    assert links() == {1: None, 2: 1, 3: None, 4: None, 5: None}
    # Rows 4 and 5 became primaries after the cursor passed 3, so they are checked too.
    assert (done.status, done.active, done.processed) == (DONE, None, 4)
    assert seen == [1, 1, 1, 1]
    assert done.customers_changed == 3
    assert done.rows_changed == 3
    assert {e.customer_id for e in audits("reconcile")} == {1, 4, 5}
    # Customer 2 merged into customer 1: the entry says what both held before.
    (merged,) = [e for e in audits("reconcile") if e.customer_id == 1]
    assert customers_in(merged.before) == {1: [1], 2: [2]}
    assert customers_in(merged.after) == {1: [1, 2]}
    assert_invariants()
    # Nothing left to fix, and a new run may start now.
    again = create_job(AGENT)
    claim_job(again.id)
    assert run_job(again.id).customers_changed == 0


@contextmanager
def contact_table_gone(dialect: str) -> Iterator[None]:
    """The Contact table renamed away while the block runs: every read of it fails."""
    rename = "ALTER TABLE {} RENAME TO {}" if dialect == "sqlite" else "RENAME TABLE {} TO {}"
    with db.engine.begin() as conn:
        conn.exec_driver_sql(rename.format("Contact", "contact_gone"))
    try:
        yield
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(rename.format("contact_gone", "Contact"))


def _failed_run(job_id: int) -> ReconcileJob:
    failed = db.session.get(ReconcileJob, job_id, populate_existing=True)
    assert (failed.status, failed.active) == (FAILED, None)
    return failed


def test_a_run_the_database_fails_under_says_what_failed_not_its_sql(
    signed_in_client, dialect, caplog
):
    # Left from review: the run's page showed the driver's whole message, SQL statement and
    # all ("The run failed: (sqlite3.OperationalError) ... [SQL: SELECT ...]"), and the
    # log a traceback through the batch code for a disk or server that failed.
    _corrupt()
    job = create_job(AGENT)
    claim_job(job.id)
    with contact_table_gone(dialect), pytest.raises(DBAPIError):
        run_job(job.id)
    failed = _failed_run(job.id)
    if dialect == "sqlite":
        assert failed.error == "the database failed (OperationalError: no such table: Contact)"
    else:
        # MariaDB calls a missing table a programming error, which keeps its traceback.
        assert failed.error == "the database failed (ProgrammingError 1146)"
    (logged,) = [r for r in caplog.records if r.name == "webapp.reconcile.jobs"]
    assert logged.getMessage().startswith(f"reconciliation run {job.id} failed")
    assert (logged.exc_info is None) == (dialect == "sqlite")
    html = signed_in_client.get(f"/reconcile/{job.id}").get_data(as_text=True)
    assert "The run failed: the database failed (" in html
    assert "SQL" not in html


def test_a_run_the_database_fails_before_it_starts_lets_the_next_one_start(
    signed_in_client, dialect
):
    # Seen checking the above: a database failing while the run counted its customers left
    # the run queued, and every new run was refused as "already running" for five minutes.
    job = create_job(AGENT)
    db.session.rollback()  # a SQLite snapshot from before the table went would still hold it
    with contact_table_gone(dialect), pytest.raises(DBAPIError):
        claim_job(job.id)
    assert _failed_run(job.id).error.startswith("could not start: the database failed (")
    html = signed_in_client.get(f"/reconcile/{job.id}").get_data(as_text=True)
    assert "The run could not start: the database failed (" in html
    assert "It changed nothing; start a new run." in html
    assert f"asked for by {AGENT}" in html
    # No bar at "0 of 0 customers checked", and no batches said to be kept.
    assert "<progress" not in html and "batches" not in html
    assert claim_job(create_job(AGENT).id).status == "running"


def test_a_claim_the_database_fails_leaves_a_run_already_running_as_it_is(app, dialect):
    # Found in diff review: a failed claim marked the run failed whatever its status, so
    # `flask reconcile --job N` for a run another process was running, on a database
    # that failed meanwhile, marked that run failed and let a second run start beside it.
    job = create_job(AGENT)
    claim_job(job.id)
    db.session.rollback()
    with contact_table_gone(dialect), pytest.raises(DBAPIError):
        claim_job(job.id)
    running = db.session.get(ReconcileJob, job.id, populate_existing=True)
    assert (running.status, running.active, running.error) == ("running", 1, None)
    with pytest.raises(AlreadyRunning):
        create_job(AGENT)


def _delete_by_hand(*ids):
    """Soft-delete rows with SQL on the table, as an operator might, bypassing the app."""
    table = Contact.__table__
    db.session.execute(update(table).where(table.c.id.in_(ids)).values(deletedAt=utcnow()))
    db.session.commit()


def test_a_whole_database_run_regroups_customers_whose_primary_was_deleted_by_hand(app):
    app.config["RECONCILE_BATCH_SIZE"] = 2
    for email, phone in [("a@x.io", "1"), ("b@x.io", "1"), ("c@x.io", "1")]:
        ident(email, phone)  # customer 1: rows 1, 2, 3
    ident("d@x.io", "4")  # customer 4
    for email, phone in [("e@x.io", "5"), ("f@x.io", "5")]:
        ident(email, phone)  # customer 5: rows 5, 6
    ident("g@x.io", "7")  # customer 7, then 8, 9, 10 join it by e-mail
    for phone in ["8", "9", "10"]:
        ident("g@x.io", phone)
    # Primaries 1, 5 and 7 deleted outside the app: batches of two are
    # customers 1 and 4, then 5 and 7, then 8, which became a primary (and
    # so a customer) after the cursor passed it.
    _delete_by_hand(1, 5, 7)
    job = create_job(AGENT)
    # Live primary 4, plus customers 1, 5 and 7 (their ids are deleted rows).
    assert claim_job(job.id).total == 4
    done = run_job(job.id)
    # Deleted rows follow their old customer's new primary, as after an agent's delete.
    assert links() == {1: 2, 2: None, 3: 2, 4: None, 5: 6, 6: None, 7: 8, 8: None, 9: 8, 10: 8}
    assert (done.status, done.processed, done.customers_changed) == (DONE, 5, 3)
    assert {e.customer_id for e in audits("reconcile")} == {2, 6, 8}
    assert_invariants()
    assert ident("c@x.io").primary_id == 2
    again = create_job(AGENT)
    assert claim_job(again.id).total == 4
    assert run_job(again.id).customers_changed == 0


def test_flask_reconcile_finds_links_made_by_hand_to_a_secondary_or_to_the_row_itself(app, runner):
    ident("a@x.io", "1")  # customer 1
    ident("a@x.io", "2")  # row 2 joins it by e-mail
    ident("z@x.io", "9")  # customer 3
    ident("y@x.io", "8")  # customer 4
    table = Contact.__table__
    # With SQL: row 3 hangs off secondary 2 (two hops) and row 4 off itself. Neither
    # shares a value with the row it points at, so no customer's rows lead to it.
    for row_id, linked in [(3, 2), (4, 4)]:
        db.session.execute(
            update(table)
            .where(table.c.id == row_id)
            .values(linkedId=linked, linkPrecedence="secondary")
        )
    db.session.commit()
    result = runner.invoke(args=["reconcile"])
    assert result.exit_code == 0, result.output
    assert "Checked 3 customers: 2 changed, 2 contact rows relinked." in result.output
    assert links() == {1: None, 2: 1, 3: None, 4: None}
    assert {e.customer_id for e in audits("reconcile")} == {3, 4}
    assert_invariants()


@pytest.mark.parametrize("repair", ["flask reconcile", "re-run"])
def test_a_deleted_row_sql_linked_to_a_secondary_is_put_back_one_hop(app, runner, repair):
    # Reported: rows 1 <- 2 <- 3 sharing a@x.io, row 3 deleted through the app, then
    # `UPDATE Contact SET linkedId=2 WHERE id=3`: flask reconcile said "Checked 1
    # customer: 0 changed" and left it two hops away, its history off the customer.
    for phone in ["1", "2", "3"]:
        ident("a@x.io", phone)
    delete_contact(3, AGENT)
    table = Contact.__table__
    db.session.execute(update(table).where(table.c.id == 3).values(linkedId=2))
    db.session.commit()
    if repair == "flask reconcile":
        result = runner.invoke(args=["reconcile"])
        assert result.exit_code == 0, result.output
        assert "Checked 1 customer: 1 changed, 1 contact row relinked." in result.output
    else:
        assert reconcile_customer(2, AGENT).summary() == "1 deleted contact row relinked."
    assert links() == {1: None, 2: 1, 3: 1}
    # Found in review: a run that changed only deleted rows wrote no audit entry (and a
    # re-run's said nothing changed), so nothing showed afterwards that row 3 moved.
    (entry,) = audits("reconcile")
    assert entry.customer_id == 1
    assert customers_in(entry.before) == customers_in(entry.after) == {1: [1, 2]}
    assert json.loads(entry.before)["deleted_contacts"] == {"3": 2}
    assert json.loads(entry.after)["deleted_contacts"] == {"3": 1}
    assert whole_run() == 0
    assert len(audits("reconcile")) == 1


def deleted_off_their_primary() -> dict[int, int | None]:
    """Deleted rows not one hop from a primary (live, or deleted and linked to nothing):
    {row id: linkedId}."""
    db.session.expire_all()
    by_id = {c.id: c for c in contacts()}
    return {
        c.id: c.linkedId
        for c in by_id.values()
        if c.deletedAt is not None
        and c.linkedId is not None
        and (c.linkedId == c.id or by_id[c.linkedId].linkedId is not None)
    }


def _link_by_hand(**links_wanted):
    """`UPDATE Contact SET linkedId=... WHERE id=...`, as an operator might: row_3=3, ..."""
    table = Contact.__table__
    for name, linked in links_wanted.items():
        row_id = int(name.removeprefix("row_"))
        db.session.execute(update(table).where(table.c.id == row_id).values(linkedId=linked))
    db.session.commit()


def test_a_run_makes_deleted_rows_sql_linked_to_themselves_deleted_primaries(app, runner):
    # Reported: a deleted row with linkedId = its own id was never repaired: no
    # customer's rows lead to it, and the run looked only for live rows so linked.
    app.config["RECONCILE_BATCH_SIZE"] = 1
    ident("a@x.io", "1")
    ident("a@x.io", "2")  # customer 1: rows 1 and 2
    ident("b@x.io", "3")  # customer 3
    ident("c@x.io", "4")  # customers 4 and 5, of one row each
    ident("d@x.io", "5")
    for row_id in (2, 4, 5):
        delete_contact(row_id, AGENT)
    # Between customers 1 and 3, and past the last customer (the run's last stretch
    # reads everything after it, one batch's worth at a time).
    _link_by_hand(row_2=2, row_4=4, row_5=5)
    assert deleted_off_their_primary() == {2: 2, 4: 4, 5: 5}
    result = runner.invoke(args=["reconcile"])
    assert result.exit_code == 0, result.output
    # They point at nothing: no customer is theirs, so none counts as changed.
    assert "Checked 2 customers: 0 changed, 3 contact rows relinked." in result.output
    assert links() == {1: None, 2: None, 3: None, 4: None, 5: None}
    assert deleted_off_their_primary() == {}
    assert_invariants()
    # An entry for each, filed under the row (its own customer now), listing it alone.
    entries = {e.customer_id: e for e in audits("reconcile")}
    assert set(entries) == {2, 4, 5}
    assert json.loads(entries[2].before) == {"deleted_contacts": {"2": 2}}
    assert json.loads(entries[2].after) == {"deleted_contacts": {"2": None}}
    assert whole_run() == 0
    assert len(audits("reconcile")) == 3


@pytest.mark.parametrize("repair", ["flask reconcile", "re-run"])
def test_a_deleted_primary_sql_linked_to_itself_goes_with_its_live_rows(app, runner, repair):
    # Passed before the fix above too: live rows naming the row as their customer make it
    # a customer to regroup, its id read with them; kept so that it stays so.
    for phone in ["1", "2", "3"]:
        ident("a@x.io", phone)
    _delete_by_hand(1)
    _link_by_hand(row_1=1)
    if repair == "flask reconcile":
        result = runner.invoke(args=["reconcile"])
        # Customer 1, then 2, which became a primary after the cursor passed 1.
        assert "Checked 2 customers: 1 changed, 3 contact rows relinked." in result.output
    else:
        assert reconcile_customer(2, AGENT).summary() == (
            "Contact 2 became the primary; 2 contact rows relinked; 1 deleted contact row relinked."
        )
    assert links() == {1: 2, 2: None, 3: 2}
    (entry,) = audits("reconcile")
    assert json.loads(entry.after)["deleted_contacts"] == {"1": 2}
    assert whole_run() == 0


@pytest.mark.parametrize("repair", ["flask reconcile", "re-run"])
def test_a_chain_of_deleted_rows_is_put_back_one_hop_in_one_repair(app, runner, repair):
    # Reported: deleted 4 -> deleted 3 -> live secondary 2 -> primary 1. The run put 3
    # back under 1, but 4 kept pointing at 3, on every later run.
    for phone in ["1", "2", "3", "4", "5"]:
        ident("a@x.io", phone)
    for row_id in (3, 4, 5):
        delete_contact(row_id, AGENT)
    _link_by_hand(row_3=2, row_4=3, row_5=4)
    assert deleted_off_their_primary() == {3: 2, 4: 3, 5: 4}
    if repair == "flask reconcile":
        result = runner.invoke(args=["reconcile"])
        assert result.exit_code == 0, result.output
        assert "Checked 1 customer: 1 changed, 3 contact rows relinked." in result.output
    else:
        assert reconcile_customer(2, AGENT).summary() == "3 deleted contact rows relinked."
    assert links() == {1: None, 2: 1, 3: 1, 4: 1, 5: 1}
    (entry,) = audits("reconcile")
    assert entry.customer_id == 1
    assert json.loads(entry.before)["deleted_contacts"] == {"3": 2, "4": 3, "5": 4}
    assert json.loads(entry.after)["deleted_contacts"] == {"3": 1, "4": 1, "5": 1}
    assert whole_run() == 0
    assert len(audits("reconcile")) == 1


@pytest.mark.parametrize("repair", ["flask reconcile", "re-run"])
def test_a_cycle_of_deleted_rows_under_a_regrouped_customer_ends(app, runner, repair):
    for phone in ["1", "2", "3", "4"]:
        ident("a@x.io", phone)  # customer 1: rows 1 to 4
    delete_contact(4, AGENT)
    # Primary 1 deleted by SQL, and linked with deleted row 4 in a cycle: 1 -> 4 -> 1.
    _delete_by_hand(1)
    _link_by_hand(row_1=4)
    if repair == "flask reconcile":
        result = runner.invoke(args=["reconcile"])
        assert result.exit_code == 0, result.output
    else:
        reconcile_customer(2, AGENT)
    assert links() == {1: 2, 2: None, 3: 2, 4: 2}
    assert deleted_off_their_primary() == {}
    assert whole_run() == 0


def test_a_run_repairs_deleted_chains_and_cycles_no_live_row_leads_to(app, runner):
    app.config["RECONCILE_BATCH_SIZE"] = 1
    for email in ["a", "b", "c", "d", "e", "f", "g", "h"]:
        ident(f"{email}@x.io")  # customers 1 to 8, of one row each
    for row_id in (2, 3, 4, 6, 7, 8):
        delete_contact(row_id, AGENT)
    # 4 -> 3 -> 2, a deleted primary no live row names; 6 -> 7 -> 8 -> 6 and, after
    # the last customer, nothing but deleted rows.
    _link_by_hand(row_3=2, row_4=3, row_6=7, row_7=8, row_8=6)
    assert deleted_off_their_primary() == {4: 3, 6: 7, 7: 8, 8: 6}
    result = runner.invoke(args=["reconcile"])
    assert result.exit_code == 0, result.output
    assert "Checked 2 customers: 0 changed, 3 contact rows relinked." in result.output
    # 2 and 6, the oldest of the cycle, are the deleted primaries the others point at
    # (8 did already).
    assert links() == {1: None, 2: None, 3: 2, 4: 2, 5: None, 6: None, 7: 6, 8: 6}
    assert deleted_off_their_primary() == {}
    entries = {e.customer_id: e for e in audits("reconcile")}
    assert set(entries) == {2, 6}
    assert json.loads(entries[2].before) == {"deleted_contacts": {"4": 3}}
    assert json.loads(entries[2].after) == {"deleted_contacts": {"4": 2}}
    assert json.loads(entries[6].before) == {"deleted_contacts": {"6": 7, "7": 8}}
    assert json.loads(entries[6].after) == {"deleted_contacts": {"6": None, "7": 6}}
    assert whole_run() == 0
    assert len(audits("reconcile")) == 2


def test_a_runs_entry_lists_the_deleted_rows_it_relinked_with_their_customers_change(app):
    ident("a@x.io", "1")
    ident("a@x.io", "2")  # customer 1: rows 1 and 2
    ident("a@x.io", "3")
    delete_contact(3, AGENT)  # deleted row 3, then linked by hand to secondary 2
    ident("c@x.io", "555")
    ident("d@x.io", "555")  # customer 4: rows 4 and 5, joined by 555
    ident("d@x.io", "6")
    delete_contact(6, AGENT)  # deleted row 6 holds d@x.io, as row 5 does
    table = Contact.__table__
    db.session.execute(update(table).where(table.c.id == 3).values(linkedId=2))
    db.session.commit()
    _block_by_hand("555")
    whole_run()  # one batch: both customers
    assert links() == {1: None, 2: 1, 3: 1, 4: None, 5: None, 6: 5}
    entries = {e.customer_id: e for e in audits("reconcile")}
    assert set(entries) == {1, 5}
    # Customer 1's only change is row 3: an entry of its own, filed under it.
    assert customers_in(entries[1].before) == customers_in(entries[1].after) == {1: [1, 2]}
    assert json.loads(entries[1].before)["deleted_contacts"] == {"3": 2}
    assert json.loads(entries[1].after)["deleted_contacts"] == {"3": 1}
    # Customer 4's split takes deleted row 6 with row 5, which holds its e-mail.
    assert customers_in(entries[5].before) == {4: [4, 5]}
    assert customers_in(entries[5].after) == {4: [4], 5: [5]}
    assert json.loads(entries[5].before)["deleted_contacts"] == {"6": 4}
    assert json.loads(entries[5].after)["deleted_contacts"] == {"6": 5}
    job = db.session.scalars(select(ReconcileJob)).one()
    assert (job.customers_changed, job.rows_changed) == (2, 3)


def test_a_run_that_splits_a_customer_audits_where_every_row_went(app):
    for email in ["a@x.io", "b@x.io", "c@x.io"]:
        ident(email, "555")  # customer 1: rows 1, 2 and 3, joined only by the phone
    # Blocked with SQL, not from the dashboard: nothing recomputed the customer.
    table = Identifier.__table__
    db.session.execute(
        update(table)
        .where(table.c.kind == "phone", table.c.key == "555")
        .values(blocked_at=utcnow(), blocked_reason="by hand", blocked_by="sql")
    )
    db.session.commit()
    whole_run()
    assert links() == {1: None, 2: None, 3: None}
    # One entry for the split, as the agent's block would have written, filed under the
    # oldest customer split off.
    (entry,) = audits("reconcile")
    assert entry.customer_id == 2
    assert customers_in(entry.before) == {1: [1, 2, 3]}
    # Customer 1 kept row 1: the entry says so, rather than losing it.
    assert customers_in(entry.after) == {1: [1], 2: [2], 3: [3]}
    assert {c.customer_id for c in entry.named_customers} == {1, 3}


def _block_by_hand(key):
    table = Identifier.__table__
    db.session.execute(
        update(table)
        .where(table.c.key == key)
        .values(blocked_at=utcnow(), blocked_reason="by hand", blocked_by="sql")
    )
    db.session.commit()


def test_a_runs_audit_entry_names_only_the_customers_that_changed_together(app):
    # Found in review: each changed customer's entry listed, as "after", every customer
    # the whole batch changed, so an unrelated customer's split showed in this one's
    # timeline (and the entry named it).
    ident("a@x.io", "555")
    ident("b@x.io", "555")  # customer 1: rows 1 and 2, joined by 555
    ident("c@x.io", "777")  # customer 3
    ident("d@x.io", "888")  # customer 4, linked by hand to customer 3
    table = Contact.__table__
    db.session.execute(
        update(table).where(table.c.id == 4).values(linkedId=3, linkPrecedence="secondary")
    )
    _block_by_hand("555")
    whole_run()  # one batch: both customers
    assert links() == {1: None, 2: None, 3: None, 4: None}
    entries = {e.customer_id: e for e in audits("reconcile")}
    assert set(entries) == {2, 4}
    assert customers_in(entries[2].before) == {1: [1, 2]}
    assert customers_in(entries[2].after) == {1: [1], 2: [2]}
    assert customers_in(entries[4].before) == {3: [3, 4]}
    assert customers_in(entries[4].after) == {3: [3], 4: [4]}
    assert {c.customer_id for c in entries[2].named_customers} == {1}
    assert {c.customer_id for c in entries[4].named_customers} == {3}


def test_a_run_splitting_a_customer_into_hundreds_writes_one_audit_entry(app):
    # Found in review: one entry per part, each naming every part, made a 2,000-row
    # customer's split take 218 s in one batch (SQLite's write lock held all along) and
    # write 4 million audit_customer rows; 40,000 rows would never finish.
    count = 300
    one_phone_customer(count)
    # Blocked with SQL: nothing recomputed the customer.
    db.session.execute(
        insert(Identifier).values(
            kind="phone",
            key="5550000",
            blocked_at=utcnow(),
            blocked_reason="junk",
            blocked_by="sql",
        )
    )
    db.session.commit()
    assert whole_run() == count - 1
    (entry,) = audits("reconcile")
    assert customers_in(entry.before) == {1: list(range(1, count + 1))}
    assert customers_in(entry.after) == {n: [n] for n in range(1, count + 1)}
    assert db.session.scalar(select(func.count()).select_from(AuditCustomer)) == count - 1


def test_flask_reconcile_runs_with_a_progress_bar(app, runner):
    _corrupt()
    result = runner.invoke(args=["reconcile"])
    assert result.exit_code == 0, result.output
    assert "Reconciling 4 customers" in result.output
    assert "Checked 5 customers: 3 changed, 3 contact rows relinked." in result.output
    job = db.session.scalar(select(ReconcileJob))
    assert (job.status, job.actor) == (DONE, "system")
    assert_invariants()


def test_a_run_for_a_job_not_waiting_is_refused(app, runner):
    job = create_job(AGENT)
    claim_job(job.id)
    result = runner.invoke(args=["reconcile", "--job", str(job.id)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert f"Error: reconciliation run {job.id} is running, not waiting to start" in result.output


def test_a_run_for_a_job_that_does_not_exist_is_a_clear_error(app, runner):
    result = runner.invoke(args=["reconcile", "--job", "999"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Error: there is no reconciliation run 999" in result.output
    assert db.session.scalar(select(func.count()).select_from(ReconcileJob)) == 0


@pytest.mark.parametrize("job_id", ["0", "-1", str(2**64), "seven"])
def test_a_job_id_no_run_can_have_is_refused_before_the_database(app, runner, job_id):
    result = runner.invoke(args=["reconcile", "--job", job_id])
    assert result.exit_code == 2
    assert "Invalid value for '--job'" in result.output


def test_flask_reconcile_while_a_run_is_under_way_names_that_run(app, runner):
    job = create_job(AGENT)
    result = runner.invoke(args=["reconcile"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert (
        "Error: a reconciliation of the whole database is already running: "
        f"run {job.id} (queued), started by {AGENT}"
    ) in result.output
    assert db.session.scalars(select(ReconcileJob.id)).all() == [job.id]


def test_identify_api_answers_422_when_every_value_is_blocked(app, client):
    set_blocked(parse_identifier("test@test.com"), True, AGENT, "test address")
    set_blocked(parse_identifier("000"), True, AGENT, "placeholder phone")
    response = client.post("/identify", json={"email": "TEST@test.com", "phoneNumber": "0-0-0"})
    assert response.status_code == 422
    assert response.get_json()["error"] == {
        "code": "blocked_identifier",
        "message": "every value in the request is blocked, so it cannot identify a customer",
        "fields": {"email": "this value is blocked", "phoneNumber": "this value is blocked"},
    }
    assert_matches_openapi(app, "/identify", "post", response)
    assert contacts() == []
    response = client.post("/identify", json={"email": "real@x.io", "phoneNumber": "000"})
    assert response.status_code == 200
    assert response.get_json()["contact"]["phoneNumbers"] == []
    assert [(c.email, c.phoneNumber) for c in contacts()] == [("real@x.io", None)]


def test_a_run_that_stopped_responding_gives_way_to_a_new_one(app):
    stale = create_job(AGENT)
    db.session.execute(
        update(ReconcileJob.__table__)
        .where(ReconcileJob.id == stale.id)
        .values(heartbeat_at=utcnow() - timedelta(minutes=6))
    )
    db.session.commit()
    assert db.session.get(ReconcileJob, stale.id, populate_existing=True).stalled
    fresh = create_job(AGENT)
    old = db.session.get(ReconcileJob, stale.id, populate_existing=True)
    assert (old.status, old.active, old.error) == ("failed", None, "stopped responding")
    assert (fresh.status, fresh.active) == ("queued", 1)


def test_blocked_lookup_handles_more_keys_than_one_statement_binds(app):
    now = utcnow()
    keys = [("email", f"user{i}@x.io") for i in range(1200)] + [("phone", "555")]
    db.session.execute(
        insert(Identifier.__table__),
        [
            {"kind": k, "key": v, "created_at": now, "blocked_at": now if i % 400 == 7 else None}
            for i, (k, v) in enumerate(keys)
        ],
    )
    db.session.commit()
    found = blocked_keys(db.session.connection(), keys)
    assert found == {("email", "user7@x.io"), ("email", "user407@x.io"), ("email", "user807@x.io")}


# --- evidence agrees with identify after deletions and splits ----------------------


def whole_run() -> int:
    """Run a whole-database reconciliation; how many rows it changed."""
    job = create_job(AGENT)
    claim_job(job.id)
    return run_job(job.id).rows_changed


def customer_of(email=None, phone=None) -> int:
    return ident(email, phone).primary_id


def test_a_deleted_rows_value_coming_back_is_new_to_reconciliation_as_to_identify(app):
    # An agent merged two customers, then deleted the row holding bob's values.
    ann, bob = customer_of("ann@x.io", "111"), customer_of("bob@x.io", "222")
    merge_customers(ann, bob, AGENT)
    delete_contact(bob, AGENT)
    # No live row holds bob@x.io: identify starts a new customer, and the agents'
    # old word about the value must not merge it back on the next run.
    again = customer_of("bob@x.io")
    assert again not in (ann, bob)
    assert whole_run() == 0
    assert customer_of("bob@x.io") == again
    assert_invariants()


def test_a_bridged_value_deleted_then_seen_again_stays_a_customer_of_its_own(app):
    ident("ann@x.io", "111")
    ident("bob@x.io", "222")
    ident("ann@x.io", "222")  # the bridge: evidence that ann@x.io and 222 are one person
    delete_contact(1, AGENT)
    again = customer_of("ann@x.io")
    assert again == 3
    assert whole_run() == 0
    assert customer_of("ann@x.io") == 3 and customer_of("bob@x.io") == 2
    assert_invariants()


def test_a_bond_is_found_from_every_customer_it_joins_after_a_split(app):
    # An agent links bob's e-mail and a phone to ann's customer, then blocks ann's
    # e-mail: ann splits off, and the bond still joins bob's e-mail and the phone.
    ann, bob, phone = customer_of("e1@x.io"), customer_of("e2@x.io"), customer_of(None, "333")
    link_values(ann, [parse_email("e2@x.io"), parse_phone("333")], AGENT)
    set_blocked(parse_email("e1@x.io"), True, AGENT, "shared inbox")
    assert customer_of("e2@x.io") == customer_of(None, "333") == bob != phone
    # Recomputing bob's customer alone and the whole database agree, run after run.
    assert not reconcile_customer(bob, AGENT).changed
    assert whole_run() == 0
    assert not reconcile_customer(bob, AGENT).changed
    assert customer_of("e2@x.io") == customer_of(None, "333") == bob
    assert_invariants()


def test_a_box_whose_clock_runs_behind_never_writes_a_secondary_older_than_its_primary(app):
    ann = customer_of("ann@x.io", "111")
    # Another box wrote ann's customer with its clock an hour ahead of this one's.
    ahead = utcnow() + timedelta(hours=1)
    db.session.execute(update(Contact).where(Contact.id == ann).values(createdAt=ahead))
    db.session.commit()
    assert customer_of("ann.new@x.io", "111") == ann
    newest = contacts()[-1]
    assert (newest.linkedId, newest.createdAt >= ahead) == (ann, True)
    assert whole_run() == 0
    assert customer_of("ann.new@x.io") == ann
    assert_invariants()


def test_an_agents_link_on_a_box_whose_clock_runs_behind_stamps_no_older_row(app):
    ann = customer_of("ann@x.io", "111")
    ahead = utcnow() + timedelta(hours=1)
    db.session.execute(update(Contact).where(Contact.id == ann).values(createdAt=ahead))
    db.session.commit()
    outcome = link_values(ann, [parse_email("ann.work@x.io")], AGENT)
    added = db.session.get(Contact, outcome.added_row)
    assert (added.linkedId, added.createdAt >= ahead) == (ann, True)
    assert whole_run() == 0
    assert_invariants()


def test_blocking_a_value_thousands_of_rows_share_keeps_its_whole_audit_entry(app):
    # Found by hand on MariaDB: the block's state listing the 6,000 customers it split
    # off outgrew a TEXT column (64 KB), the database refused the entry ("Data too long",
    # a 503), and the value was not blocked.
    one_phone_customer(6000)
    set_blocked(parse_phone("5550000"), True, actor="dana@support.example", reason="junk")
    assert blocked_keys(db.session.connection(), [("phone", "5550000")])
    entry = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "block")).one()
    assert len(entry.after) > 65_535
    assert len(json.loads(entry.after)["customers"]) == 6000
