"""The one place that decides whether a dashboard answer is a whole page or a fragment.

Also what every HTML area reads from a request the same way: the customer a
URL names, the page of a list, the page of search results a search box asks for.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Response, abort, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from ..models import row_id
from .customers import find_orphaned, locate_customer
from .search import SearchPage, search_customers

# Far past any real list, and an offset every database can bind.
MAX_PAGE = 100_000

# Words for the HTTP errors people meet; any other keeps werkzeug's name and description.
_HTTP_ERROR_WORDS = {
    404: ("Page not found", "There is no page at this address. Check the link, or search instead."),
    405: ("Not allowed here", "This page does not accept that kind of request."),
}


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


def not_found(thing: str, ident: int, title: str | None = None) -> Response:
    """The dashboard's one not-found answer: "<thing> <ident> not found", a search box, 404.

    Every HTML area uses it for a missing customer, contact, run, ...; the JSON
    API keeps its own JSON 404. ``title`` says more when it is known why (a
    contact deleted already).
    """
    return page_or_fragment(
        "dashboard/not_found.html",
        "dashboard/_not_found.html",
        404,
        thing=thing,
        ident=ident,
        title=title,
    )


def error_page(
    title: str, message: str, status: int, headers: dict | list[tuple[str, str]] | None = None
) -> Response:
    """The dashboard's one error answer for people: a titled message in the page, ``status``.

    Never cached: the page's top bar names the signed-in agent, and app-wide
    error handlers run outside the blueprints that add ``Cache-Control``.
    """
    page = render_template("dashboard/error.html", title=title, message=message)
    response = make_response(page, status, headers or {})
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def http_error_page(exc: HTTPException) -> Response:
    """A werkzeug HTTP error (404, 405, 413, ...) as the error page, with its status and headers.

    The headers the error carries (``Allow`` on a 405, ``Retry-After`` on a
    429, ...) are kept; its plain-text body's Content-Type is not.
    """
    status = exc.code or 500
    title, message = _HTTP_ERROR_WORDS.get(status, (exc.name, exc.description or exc.name))
    headers = [(name, value) for name, value in exc.get_headers() if name.lower() != "content-type"]
    return error_page(title, message, status, headers)


def customer_or_404(contact_id: int) -> int:
    """The primary id of the customer holding ``contact_id``; else the request ends with a 404."""
    primary_id = locate_customer(contact_id)
    if primary_id is None:
        orphaned = find_orphaned(contact_id)
        if orphaned is not None:
            abort(
                page_or_fragment(
                    "dashboard/orphaned.html",
                    "dashboard/_orphaned.html",
                    409,
                    orphaned=orphaned,
                )
            )
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


def page_number() -> int:
    """The page of a list the request asks for (``page``): 1 unless it names a later one."""
    return min(max(request.args.get("page", default=1, type=int), 1), MAX_PAGE)


def requested_search(query: str) -> SearchPage | None:
    """The page of customers matching ``query`` that the request asks for; None with no query.

    Every search box with "Load more" (the home page, the merge dialog) reads
    it here: ``page`` and ``upto`` come from the link of the page before.
    While ``page_number() > 1``, the view answers htmx with the rows alone.
    """
    if not query:
        return None
    return search_customers(query, page=page_number(), upto=request.args.get("upto", type=row_id))
