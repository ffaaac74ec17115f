"""The identity-aware voucher pool: offers, vouchers owned by customers, redemption.

``init_vouchers(app)`` registers the JSON API, the dashboard's voucher section
and offers page, and offers the customer's valid vouchers to the engagements
customer card.
"""

from __future__ import annotations

from flask import Flask

from . import models  # noqa: F401  (registers the tables with the metadata)


def init_vouchers(app: Flask) -> None:
    """Register the vouchers blueprints, the customer-page section and the customer-card hook."""
    from ..dashboard.sections import register_nav, register_section
    from ..extensions import csrf
    from . import views
    from .api import bp as api_bp
    from .api import voucher_json
    from .rules import VALID
    from .service import vouchers_of_customers

    # Integrations authenticate with API keys, not cookies: no CSRF token.
    csrf.exempt(api_bp)
    app.register_blueprint(api_bp)
    register_section(
        "vouchers",
        "vouchers/_section.html",
        views.section_data,
        order=20,
        label="Vouchers",
        anchor="vouchers",
    )
    register_nav("Offers", "vouchers.offers", order=30)
    app.register_blueprint(views.bp)

    def valid_vouchers(customer_ids: list[int]) -> dict[int, list[dict]]:
        return {
            owner: [voucher_json(v) for v in views if v.status == VALID]
            for owner, views in vouchers_of_customers(customer_ids).items()
        }

    app.extensions["customer_vouchers"] = valid_vouchers
