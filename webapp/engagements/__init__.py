"""Engagement history across channels and the incoming-call screen-pop.

``init_engagements(app)`` registers the JSON API (events, lookup, telephony
webhook) and the dashboard parts (activity timeline, names, screen-pops).
"""

from __future__ import annotations

from flask import Flask

from . import models  # noqa: F401  (registers the tables with the metadata)


def init_engagements(app: Flask) -> None:
    """Register the engagements blueprints; call after the dashboard is set up."""
    from ..dashboard.search import register_matcher
    from ..dashboard.sections import register_names, register_section
    from ..extensions import csrf
    from .api import bp as api_bp
    from .history import display_names
    from .names import match_names, name_index_entries
    from .views import activity_section, name_section
    from .views import bp as views_bp

    # Integrations authenticate with API keys, not cookies: no CSRF token.
    csrf.exempt(api_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(views_bp)
    # Both reuse the customer page's CustomerView instead of reading the customer again.
    register_section(
        "name", "engagements/_name_section.html", name_section, order=5, with_customer=True
    )
    register_section(
        "activity",
        "engagements/_activity.html",
        activity_section,
        order=10,
        with_customer=True,
        label="Activity",
        anchor="activity",
    )
    register_matcher("names", match_names, name_index_entries)
    # Search results and the merge dialog name customers as their page does.
    register_names(display_names)
