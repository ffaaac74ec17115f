"""Extension points of the dashboard: customer-page sections, action-bar buttons, top-bar links.

Other parts of the app plug into the dashboard here instead of editing its
views or base template. Register at import time of your blueprint package::

    from webapp.dashboard.sections import register_action, register_nav, register_section

    def load_vouchers(primary_id: int) -> dict:
        # Runs every query the section needs; the template only renders.
        return {"vouchers": vouchers_of(primary_id)}

    register_section("vouchers", "vouchers/_section.html", load_vouchers, order=20)
    register_action("reconcile", "reconcile/_actions.html", order=10)
    register_nav("Offers", "vouchers.offers", order=30)

* A loader registered with ``with_customer=True`` gets the page's CustomerView
  (contacts and history, already read) instead of the primary id, so it does
  not read the customer again.
* A section template is included inside the customer page with ``customer``
  (the CustomerView of webapp.dashboard.customers) and ``section`` (the dict
  its loader returned) in its context. Its root element should be a
  ``<section class="panel">`` with a heading.
* A section registered with a ``label`` and the ``anchor`` (its root element's
  id) is listed in the page's "On this page" links, after the contacts and
  the timeline.
* A loader that knows the customer's display name returns it under the key
  ``CUSTOMER_NAME`` as well; the page's heading shows it, so the name is read
  once per page (the engagements area's name section does).
* An action template is included in the action bar of the customer page with
  ``customer`` in its context (typically a button or a link opening a dialog).
* A nav link appears in the top bar of every page; ``endpoint`` is passed to
  ``url_for`` with no arguments.
* The area that keeps customers' display names registers how to read them for
  many customers at once (``register_names``); search results and the merge
  dialog show them through ``customer_names``.

Lower ``order`` comes first; a name registered again replaces the earlier one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from ..extensions import db

if TYPE_CHECKING:
    from .customers import CustomerView

# Called with the primary id, or with the page's CustomerView (``with_customer``).
SectionLoader = Callable[[Any], dict[str, Any]]

# The key of a section's data under which its loader reports the customer's display name.
CUSTOMER_NAME = "customer_name"

# (connection, {primary id: the customer's live contact ids}) -> {primary id: display name},
# in one query; customers without a name left out.
NamesLoader = Callable[[Connection, Mapping[int, Sequence[int]]], Mapping[int, str]]


@dataclass(frozen=True)
class Section:
    """A block of the customer page: a template and the loader that feeds it."""

    name: str
    template: str
    loader: SectionLoader
    order: int
    with_customer: bool = False
    label: str | None = None
    anchor: str | None = None


@dataclass(frozen=True)
class Action:
    """A button (or any small template) in the customer page's action bar."""

    name: str
    template: str
    order: int


@dataclass(frozen=True)
class NavLink:
    """A link in the top bar."""

    label: str
    endpoint: str
    order: int


_sections: dict[str, Section] = {}
_actions: dict[str, Action] = {}
_nav: dict[str, NavLink] = {}
_names_loader: NamesLoader | None = None


def register_section(
    name: str,
    template: str,
    loader: SectionLoader,
    order: int = 100,
    *,
    with_customer: bool = False,
    label: str | None = None,
    anchor: str | None = None,
) -> None:
    """Add a section to every customer page; ``with_customer`` gives its loader the CustomerView.

    With ``label`` and ``anchor`` (the id of the template's root element) the
    page's "On this page" links lead to it.
    """
    if (label is None) != (anchor is None):
        raise ValueError(f"section {name!r}: a label needs an anchor and an anchor a label")
    _sections[name] = Section(name, template, loader, order, with_customer, label, anchor)


def register_action(name: str, template: str, order: int = 100) -> None:
    """Add a template to the customer page's action bar."""
    _actions[name] = Action(name, template, order)


def register_nav(label: str, endpoint: str, order: int = 100) -> None:
    """Add a link to the top bar of every page."""
    _nav[endpoint] = NavLink(label, endpoint, order)


def register_names(loader: NamesLoader) -> None:
    """Say how to read customers' display names; registering again replaces the loader."""
    global _names_loader
    _names_loader = loader


def customer_names(
    customers: Mapping[int, Sequence[int]], conn: Connection | None = None
) -> dict[int, str]:
    """Display names of customers ({primary id: its live contact ids}) in one query.

    Read on ``conn``, inside the caller's transaction, else in a read of its
    own. Customers without a name are left out, and every one is when no
    loader is registered.
    """
    if _names_loader is None or not customers:
        return {}
    if conn is not None:
        return dict(_names_loader(conn, customers))
    try:
        return dict(_names_loader(db.session.connection(), customers))
    finally:
        db.session.rollback()


def sections() -> list[Section]:
    """The registered sections, in order."""
    return sorted(_sections.values(), key=lambda s: (s.order, s.name))


def actions() -> list[Action]:
    """The registered action-bar templates, in order."""
    return sorted(_actions.values(), key=lambda a: (a.order, a.name))


def nav_links() -> list[NavLink]:
    """The registered top-bar links, in order."""
    return sorted(_nav.values(), key=lambda n: (n.order, n.label))


def load_sections(customer: CustomerView) -> list[tuple[Section, dict[str, Any]]]:
    """Every section with the data its loader returned for this customer."""
    return [
        (section, section.loader(customer if section.with_customer else customer.primary_id))
        for section in sections()
    ]


def customer_name_of(loaded: list[tuple[Section, dict[str, Any]]]) -> str | None:
    """The display name a loaded section reported under ``CUSTOMER_NAME``; None when none did."""
    for _section, data in loaded:
        if data.get(CUSTOMER_NAME):
            return data[CUSTOMER_NAME]
    return None
