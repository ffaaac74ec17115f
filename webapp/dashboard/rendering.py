"""The one place that decides whether a dashboard answer is a whole page or a fragment."""

from __future__ import annotations

from collections.abc import Iterable

from flask import Response, abort, make_response, redirect, render_template, request, url_for

from .customers import locate_customer


def wants_fragment() -> bool:
    """True for an htmx request that swaps part of a page (not boosted, not a history restore)."""
    htmx = request.htmx
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def page_or_fragment(page: str, fragment: str, status: int = 200, **context) -> Response:
    """Render ``page`` (which includes ``fragment``) or only ``fragment``, varying on HX-Request.

    A URL htmx pushed to the history is loaded cold as a normal request, so it
    always gets the page; the fragment is only for in-page swaps.
    """
    template = fragment if wants_fragment() else page
    response = make_response(render_template(template, **context), status)
    response.vary.add("HX-Request")
    return response


def not_found(thing: str, ident: int) -> Response:
    """The dashboard's one not-found answer: "<thing> <ident> not found", a search box, 404.

    Every HTML area uses it for a missing customer, contact, run, ...; the JSON
    API keeps its own JSON 404.
    """
    return page_or_fragment(
        "dashboard/not_found.html", "dashboard/_not_found.html", 404, thing=thing, ident=ident
    )


def error_page(title: str, message: str, status: int, headers: dict | None = None) -> Response:
    """The dashboard's one error answer for people: a titled message in the page, ``status``."""
    page = render_template("dashboard/error.html", title=title, message=message)
    return make_response(page, status, headers or {})


def customer_or_404(contact_id: int) -> int:
    """The primary id of the customer holding ``contact_id``; else the request ends with a 404."""
    primary_id = locate_customer(contact_id)
    if primary_id is None:
        abort(not_found("Customer", contact_id))
    return primary_id


def canonical_customer(contact_id: int, keep: Iterable[str] = ()) -> int:
    """``contact_id`` when it is a customer's primary; else the request ends here.

    Any other contact id of the customer gets a 302 to this same view of its
    primary, with the query parameters named in ``keep``; a 302, not a 301,
    because a split can later give the contact another primary. An id no live
    customer holds gets the not-found page.
    """
    primary_id = customer_or_404(contact_id)
    if primary_id != contact_id:
        kept = {name: value for name, value in request.args.items() if name in keep}
        abort(redirect(url_for(request.endpoint, contact_id=primary_id, **kept), 302))
    return primary_id
