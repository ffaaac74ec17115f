"""Dashboard pages: search (home), customer page, its contacts and the audit log."""

from __future__ import annotations

from flask import request
from wtforms import SearchField, SelectField
from wtforms.validators import Length, Optional

from ..forms import Form
from . import bp
from .cursors import InvalidCursor
from .customers import (
    CONTACTS_PAGE_SIZE,
    CONTACTS_SHOWN,
    HEADER_VALUES_SHOWN,
    audit_log,
    load_customer,
    timeline_page,
)
from .rendering import (
    canonical_customer,
    error_page,
    not_found,
    page_number,
    page_or_fragment,
    requested_search,
    wants_fragment,
)
from .sections import actions, customer_name_of, load_sections


class SearchForm(Form):
    """The search box: a GET form, so it needs no CSRF token."""

    class Meta:
        csrf = False

    q = SearchField("Search customers", validators=[Optional(), Length(max=320)])


class AuditFilterForm(Form):
    """The audit page's action filter (GET)."""

    class Meta:
        csrf = False

    action = SelectField("Action", validators=[Optional()], validate_choice=False)


@bp.get("/")
def home():
    """Search customers by any part of an e-mail or phone; the query lives in the URL."""
    form = SearchForm(request.args)
    query = (form.q.data or "").strip()
    results = requested_search(query)
    # "Load more" swaps in only the next rows; the search box swaps the whole result list.
    fragment = "dashboard/_result_rows.html" if page_number() > 1 else "dashboard/_results.html"
    return page_or_fragment(
        "dashboard/home.html", fragment, form=form, query=query, results=results
    )


@bp.get("/customers/<int:contact_id>")
def customer(contact_id: int):
    """A customer's page; any contact id of the customer redirects to its primary's page.

    ``after`` continues the timeline from a cursor: htmx's "Show more" swaps in
    only the next rows, a plain request gets the page with the timeline from there.
    """
    primary_id = canonical_customer(contact_id, keep=("order", "after"))
    newest_first = request.args.get("order") != "oldest"
    after = request.args.get("after")
    view = load_customer(primary_id)
    if view is None:
        return not_found("Customer", contact_id)
    try:
        timeline = timeline_page(view, newest_first=newest_first, after=after)
    except InvalidCursor:
        message = "This “show more” link is damaged; open the customer again."
        return error_page("Bad link", message, 400)
    # A fragment shows the timeline only: the sections are not loaded for it.
    sections = [] if wants_fragment() else load_sections(view)
    return page_or_fragment(
        "dashboard/customer.html",
        "dashboard/_timeline_rows.html" if after else "dashboard/_timeline.html",
        customer=view,
        # The name section read the name: the heading shows it without reading it again.
        customer_name=customer_name_of(sections),
        header_emails=view.emails[:HEADER_VALUES_SHOWN],
        header_phones=view.phone_numbers[:HEADER_VALUES_SHOWN],
        # Primary first, then by creation; the rest are one link away (the contacts page).
        contacts=view.contacts[:CONTACTS_SHOWN],
        timeline=timeline,
        after=after,
        sections=sections,
        actions=actions(),
    )


@bp.get("/customers/<int:contact_id>/contacts")
def contacts(contact_id: int):
    """A customer's contact rows and why each is linked, a page of them at a time.

    From the customer page, htmx swaps the first page in for its short table;
    "Load more contacts" swaps in only the next page's rows.
    """
    primary_id = canonical_customer(contact_id, keep=("page",))
    view = load_customer(primary_id, history=False)
    if view is None:
        return not_found("Customer", contact_id)
    page = page_number()
    start = (page - 1) * CONTACTS_PAGE_SIZE
    rows = view.contacts[start : start + CONTACTS_PAGE_SIZE]
    more = start + CONTACTS_PAGE_SIZE < len(view.contacts)
    return page_or_fragment(
        "dashboard/contacts.html",
        "dashboard/_contact_rows.html" if page > 1 else "dashboard/_contacts.html",
        customer=view,
        contacts=rows,
        first_row=start + 1,
        next_page=page + 1 if more else None,
    )


@bp.get("/audit")
def audit():
    """Every audit entry, newest first, filterable by action, paged."""
    form = AuditFilterForm(request.args)
    before = request.args.get("before") or None
    try:
        log = audit_log(action=form.action.data or None, before=before)
    except InvalidCursor:
        message = "This “load more” link is damaged; open the audit log again."
        return error_page("Bad link", message, 400)
    form.action.choices = [("", "All actions")] + [(a, a) for a in log.actions]
    fragment = "dashboard/_audit_rows.html" if before else "dashboard/_audit_entries.html"
    return page_or_fragment("dashboard/audit.html", fragment, form=form, log=log)
