"""Reconciliation pages and actions: link, merge, block, unblock, delete and re-run (HTML only).

Every form works as a plain POST before JavaScript loads (a page with the form,
a 303 after success); htmx swaps the same form fragment in place, gets a 422
fragment for errors and follows ``HX-Redirect`` after success.
"""

from __future__ import annotations

import re

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user

from ..dashboard import protect
from ..dashboard.cursors import InvalidCursor
from ..dashboard.rendering import (
    canonical_customer,
    customer_or_404,
    error_page,
    not_found,
    page_number,
    page_or_fragment,
    requested_search,
    wants_fragment,
)
from ..dashboard.sections import customer_names
from ..identity.rules import Customer, InvalidValue, parse_identifier
from ..models import row_id
from . import bp
from .core import NotFound, Outcome, ReconcileError
from .forms import BlockForm, ConfirmForm, DeleteForm, LinkForm, MergeForm, MergeSearchForm
from .jobs import AlreadyRunning, create_job, get_job, launch, recent_jobs
from .service import (
    VALUES_PAGE_SIZE,
    blocked_identifiers,
    customer_snapshot,
    delete_contact,
    find_contact,
    identifier_value,
    link_values,
    merge_customers,
    merge_preview,
    panel_data,
    reconcile_customer,
    set_blocked,
)

protect(bp)

# The id a block form on the customer page carries (one per value), echoed back on errors.
_FORM_ID = re.compile(r"block-form-[0-9]{1,4}")


def _agent() -> str:
    return current_user.email


def _finished(url: str, message: str):
    """After a successful action: htmx follows HX-Redirect, a plain form gets a 303."""
    flash(message, "success")
    if wants_fragment():
        response = make_response("", 200)
        response.headers["HX-Redirect"] = url
        return response
    return redirect(url, 303)


def _customer_url(customer_id: int | None) -> str:
    if customer_id is None:
        return url_for("dashboard.home")
    return url_for("dashboard.customer", contact_id=customer_id)


def _names(customers: list[Customer]) -> dict[int, str]:
    """The display names of the customers the merge dialog shows, in one read."""
    return customer_names({c.primary_id: [c.primary_id, *c.secondary_ids] for c in customers})


def _snapshot(contact_id: int):
    """The customer the merge dialog shows; else the request ends with the page saying why."""
    try:
        return customer_snapshot(contact_id)
    except NotFound:
        abort(not_found("Customer", contact_id))
    except ReconcileError as exc:
        # Its primary went since customer_or_404 looked (or a chain made outside the app).
        abort(error_page("Customer needs regrouping", f"{str(exc).capitalize()}.", 409))


@bp.route("/customers/<int:contact_id>/link", methods=["GET", "POST"])
def link(contact_id: int):
    """Add an e-mail and/or phone to a customer, by the identify rules."""
    # A customer with no live primary (deleted outside the app) is regrouped first.
    customer_or_404(contact_id)
    form = LinkForm()
    if form.validate_on_submit():
        values = form.values()
        if values:
            try:
                outcome = link_values(contact_id, values, _agent())
            except NotFound:
                return not_found("Customer", contact_id)
            except ReconcileError as exc:
                form.form_errors.append(str(exc))
            else:
                return _finished(_customer_url(outcome.customer_id), outcome.summary())
    status = 422 if request.method == "POST" else 200
    return page_or_fragment(
        "reconcile/link.html",
        "reconcile/_link_form.html",
        status,
        form=form,
        contact_id=contact_id,
    )


@bp.get("/customers/<int:contact_id>/merge")
def merge(contact_id: int):
    """The merge dialog: search for the other customer, then preview the merge.

    The search pages like the home page's: ``page`` and ``upto`` come from its "Load more".
    """
    customer_or_404(contact_id)
    search = MergeSearchForm(request.args)
    query = (search.q.data or "").strip()
    other = request.args.get("other", type=row_id)
    customer = _snapshot(contact_id)
    preview = error = None
    if other is not None:
        try:
            preview = merge_preview(contact_id, other)
        except ReconcileError as exc:
            error = str(exc)
    results = requested_search(query) if other is None else None
    if other is not None:
        fragment = "_merge_preview.html"
    else:
        # "Load more" swaps in only the next rows; the search box swaps the whole list.
        fragment = "_merge_candidate_rows.html" if page_number() > 1 else "_merge_candidates.html"
    # The page's heading names the customer; the preview names its two sides.
    named = [] if wants_fragment() else [customer]
    if preview is not None:
        named += [preview.survivor, preview.absorbed]
    return page_or_fragment(
        "reconcile/merge.html",
        f"reconcile/{fragment}",
        customer=customer,
        names=_names(named),
        search=search,
        query=query,
        results=results,
        preview=preview,
        error=error,
        form=MergeForm(other=other),
    )


@bp.post("/customers/<int:contact_id>/merge")
def merge_confirm(contact_id: int):
    """Merge two customers: the older primary survives."""
    customer_or_404(contact_id)
    form = MergeForm()
    error = None
    if form.validate_on_submit():
        try:
            outcome = merge_customers(contact_id, form.other.data, _agent())
        except ReconcileError as exc:
            error = str(exc)
        else:
            return _finished(_customer_url(outcome.customer_id), outcome.summary())
    else:
        error = "Choose the customer to merge with."
    customer = _snapshot(contact_id)
    return page_or_fragment(
        "reconcile/merge.html",
        "reconcile/_merge_preview.html",
        422,
        customer=customer,
        names=_names([] if wants_fragment() else [customer]),
        search=MergeSearchForm(),
        query="",
        results=None,
        preview=None,
        error=error,
        form=form,
    )


def _customer_id(raw: str | None) -> int | None:
    """The customer id a form carried back, or None when it holds no id at all."""
    # isascii: "²".isdigit() holds, but int("²") fails; row_id refuses what no id can be.
    if not raw or not raw.isascii() or not raw.isdigit():
        return None
    try:
        return row_id(raw) or None
    except ValueError:
        return None


@bp.route("/identifiers/block", methods=["GET", "POST"])
def block():
    """Block a value: it links nothing any more, and customers joined only by it split."""
    form = BlockForm(request.form if request.method == "POST" else request.args)
    if request.method == "POST" and form.validate():
        try:
            value = parse_identifier(form.value.data)
            outcome = set_blocked(value, True, _agent(), form.reason.data)
        except InvalidValue as exc:
            form.value.errors.append(str(exc))
        except ReconcileError as exc:
            form.form_errors.append(str(exc))
        else:
            back = outcome.customer_id or _customer_id(form.customer.data)
            target = _customer_url(back) if back else url_for(".blocked")
            return _finished(target, f"{value.key} is blocked. {outcome.summary()}")
    status = 422 if request.method == "POST" else 200
    form_id = request.form.get("form_id", "")
    return page_or_fragment(
        "reconcile/block.html",
        "reconcile/_block_form.html",
        status,
        form=form,
        form_id=form_id if _FORM_ID.fullmatch(form_id) else None,
    )


@bp.get("/blocked")
def blocked():
    """The blocked values, latest first, 100 a page: who blocked each, why, and an unblock button.

    ``before`` continues after the previous page's last value.
    """
    try:
        listing = blocked_identifiers(request.args.get("before") or None)
    except InvalidCursor:
        message = "This “more blocked values” link is damaged; open the blocked values again."
        return error_page("Bad link", message, 400)
    return page_or_fragment(
        "reconcile/blocked.html",
        "reconcile/_blocked_values.html",
        listing=listing,
        continued=bool(request.args.get("before")),
    )


@bp.post("/identifiers/<int:identifier_id>/unblock")
def unblock(identifier_id: int):
    """Unblock a value; customers it joins are merged again by the rules."""
    form = ConfirmForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        value = identifier_value(identifier_id)
    except NotFound:
        return not_found("Identifier", identifier_id)
    try:
        outcome = set_blocked(value, False, _agent())
    except ReconcileError as exc:
        message, category = str(exc), "error"
    else:
        message, category = f"{value.key} is unblocked. {outcome.summary()}", "success"
    if not wants_fragment():
        flash(message, category)
        return redirect(url_for(".blocked"), 303)
    response = make_response(
        render_template(
            "reconcile/_blocked_values.html",
            listing=blocked_identifiers(),
            continued=False,
            message=message,
            category=category,
        )
    )
    response.headers["HX-Trigger"] = "identifier-unblocked"
    return response


def _deleted(contact_id: int, outcome: Outcome) -> str:
    """The message after a delete: never "Nothing needed to change", since the delete did."""
    if outcome.customer_id is None:
        return f"Contact #{contact_id} deleted; it was the customer's last contact."
    if not outcome.changed:
        return f"Contact #{contact_id} deleted; no other contact changed customer."
    return f"Contact #{contact_id} deleted. {outcome.summary()}"


@bp.route("/contacts/<int:contact_id>/delete", methods=["GET", "POST"])
def delete(contact_id: int):
    """Soft-delete a contact after confirmation; its customer is recomputed and may split."""
    contact = find_contact(contact_id)
    if contact is None:
        return not_found("Contact", contact_id)
    if contact.deletedAt is not None:
        # Another agent (another tab) deleted it since this page was drawn.
        return not_found("Contact", contact_id, f"Contact {contact_id} was deleted already")
    form = DeleteForm()
    if form.validate_on_submit():
        try:
            outcome = delete_contact(contact_id, _agent(), form.reason.data or None)
        except ReconcileError as exc:
            form.form_errors.append(str(exc))
        else:
            return _finished(_customer_url(outcome.customer_id), _deleted(contact_id, outcome))
    status = 422 if request.method == "POST" else 200
    return page_or_fragment(
        "reconcile/delete.html", "reconcile/_delete_form.html", status, form=form, contact=contact
    )


@bp.get("/customers/<int:contact_id>/values")
def values(contact_id: int):
    """A customer's values and live contacts, to block or delete, a page of each at a time
    (``?from=`` the first one's position); the customer page lists the first few.

    A page without JavaScript; htmx's "Show all" swaps in the list it is about from the panel.
    """
    primary_id = canonical_customer(contact_id)
    start = max(request.args.get("from", 0, type=int), 0)
    section = panel_data(primary_id, VALUES_PAGE_SIZE, start)
    return page_or_fragment(
        "reconcile/values.html",
        "reconcile/_section.html",
        section={**section, "paged": True},
    )


@bp.post("/customers/<int:contact_id>/reconcile")
def rerun(contact_id: int):
    """Recompute one customer from its rows and report what changed."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        outcome = reconcile_customer(contact_id, _agent())
    except NotFound:
        return not_found("Customer", contact_id)
    return _finished(_customer_url(outcome.customer_id), outcome.summary())


@bp.route("/reconcile", methods=["GET", "POST"])
def runs():
    """Whole-database runs: start one, see the latest."""
    form = ConfirmForm()
    error = None
    if form.validate_on_submit():
        try:
            job = create_job(_agent())
        except AlreadyRunning as exc:
            error = str(exc)
        else:
            launch(job.id)
            started = f"Reconciliation run {job.id} started."
            return _finished(url_for(".run", job_id=job.id), started)
    status = 422 if error else 200
    return page_or_fragment(
        "reconcile/runs.html",
        "reconcile/_runs.html",
        status,
        form=form,
        error=error,
        jobs=recent_jobs(),
    )


@bp.get("/reconcile/<int:job_id>")
def run(job_id: int):
    """One run's progress; the progress fragment polls itself until the run ends."""
    job = get_job(job_id)
    if job is None:
        return not_found("Reconciliation run", job_id)
    return page_or_fragment("reconcile/run.html", "reconcile/_progress.html", job=job)
