"""Manual reconciliation: agents link, merge, block, delete and recompute customers (HTML)."""

from __future__ import annotations

from flask import Blueprint, Flask

from . import models  # noqa: F401  (registers the reconciliation tables)

bp = Blueprint("reconcile", __name__)


def init_reconcile(app: Flask) -> None:
    """Register the reconciliation pages and their places on the customer page."""
    from ..dashboard.sections import register_action, register_nav, register_section
    from . import views  # noqa: F401  (attaches the routes to bp)
    from .service import panel_section

    register_action("reconcile", "reconcile/_actions.html", order=10)
    register_section(
        "reconcile",
        "reconcile/_section.html",
        panel_section,
        order=5,
        with_customer=True,
        label="Values and contacts",
        anchor="reconcile-panel",
    )
    register_nav("Blocked values", "reconcile.blocked", order=60)
    register_nav("Reconcile", "reconcile.runs", order=70)
    app.register_blueprint(bp)
