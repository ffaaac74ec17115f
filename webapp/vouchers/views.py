"""Voucher pages of the dashboard (HTML only): the customer's section, issue, void, offers.

Every form works as a plain POST before JavaScript loads (a 303 back to the
customer page after success, the page with its errors on 422); htmx swaps
the voucher section in place, with an ``HX-Trigger`` after a change.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_login import current_user
from wtforms import BooleanField, DateField, HiddenField, StringField
from wtforms.validators import AnyOf, DataRequired, InputRequired, Length

from ..dashboard import protect
from ..dashboard.rendering import (
    canonical_customer,
    customer_or_404,
    page_number,
    page_or_fragment,
    wants_fragment,
)
from ..forms import Form
from ..models import utcnow
from ..text import FreeText
from .rules import (
    MAX_OFFER_NAME,
    InvalidVoucherValue,
    discount_percent,
    parse_discount,
    parse_expiry,
    parse_offer_name,
)
from .service import (
    ANY_NUMBER,
    ONCE_PER_CUSTOMER,
    VoucherError,
    customer_vouchers,
    issue_to_customer,
    offer_choices,
    offer_summaries,
    set_redeemable,
    void_voucher,
)

bp = Blueprint("vouchers", __name__)
protect(bp)
# Hundredths of a percent as people read them: 1250 -> 12.5.
bp.add_app_template_filter(discount_percent, "discount_percent")


PICK_A_DAY = "Pick the last day the voucher is valid."
CHOOSE_A_RULE = "Choose once per customer or any number of times."


class IssueForm(Form):
    """A voucher for this customer: the offer, its discount and the last day it is valid."""

    offer_name = StringField(
        "Offer", validators=[DataRequired(), Length(max=MAX_OFFER_NAME)], id="issue-offer"
    )
    discount = StringField("Discount (%)", validators=[DataRequired()], id="issue-discount")
    # Left empty, WTForms said "Not a valid date value."; this says what to do. Checked by
    # the server only, as before: the answer marks the field and puts focus on it.
    valid_until = DateField(
        "Valid until (end of day, UTC)",
        validators=[InputRequired(PICK_A_DAY)],
        render_kw={"required": False},
        id="issue-valid-until",
    )
    once_per_customer = BooleanField("Once per customer", id="issue-once")

    def parsed(self) -> tuple[str, int, datetime] | None:
        """(offer name, discount in hundredths, expiry), or None with errors on the fields.

        A field WTForms already refused is left as it is: one error each.
        """
        values = []
        for field, parse in (
            (self.offer_name, parse_offer_name),
            (self.discount, parse_discount),
            (self.valid_until, _end_of_day),
        ):
            if field.errors:
                continue
            try:
                values.append(parse(field.data))
            except InvalidVoucherValue as exc:
                field.errors.append(str(exc).replace("offer_name", "the offer name"))
        return tuple(values) if len(values) == 3 else None


class VoidForm(Form):
    """Why a voucher is withdrawn; kept in the audit log."""

    reason = StringField("Reason", validators=[DataRequired(), Length(max=500), FreeText()])


def _end_of_day(day: date | None) -> datetime:
    if day is None:
        raise InvalidVoucherValue(PICK_A_DAY)
    moment = datetime.combine(day, time(23, 59, 59), tzinfo=UTC)
    return parse_expiry(moment.isoformat(), utcnow())


def section_data(primary_id: int) -> dict:
    """The customer page's voucher section: every voucher, the offers, empty forms."""
    return {
        "customer_id": primary_id,
        "vouchers": customer_vouchers(primary_id),
        "offers": offer_choices(),
        "issue_form": IssueForm(formdata=None),
        "void_form": VoidForm(formdata=None),
    }


def _section(primary_id: int, status: int = 200, **overrides):
    """The voucher section as a fragment (htmx) or on its own page (a plain form post)."""
    data = {**section_data(primary_id), **overrides}
    return page_or_fragment(
        "vouchers/customer.html", "vouchers/_section.html", status, section=data
    )


def _changed(primary_id: int, message: str, event: str):
    """After a change: htmx gets the fresh section and an event; a plain form a 303."""
    if wants_fragment():
        response = _section(primary_id, notice=message)
        response.headers["HX-Trigger"] = event
        return response
    flash(message, "success")
    return redirect(url_for("dashboard.customer", contact_id=primary_id) + "#vouchers", 303)


@bp.get("/customers/<int:contact_id>/vouchers")
def customer_section(contact_id: int):
    """The customer's vouchers on their own page (or the section, for htmx)."""
    primary_id = canonical_customer(contact_id)
    return _section(primary_id)


@bp.post("/customers/<int:contact_id>/vouchers")
def issue(contact_id: int):
    """Issue a voucher to the customer (audit-logged)."""
    primary_id = customer_or_404(contact_id)
    form = IssueForm()
    valid = form.validate_on_submit()
    # Every field's problem at once: a missing date no longer hides a mistyped discount.
    parsed = form.parsed()
    if valid and parsed is not None:
        offer_name, discount, expires_at = parsed
        try:
            view = issue_to_customer(
                primary_id,
                offer_name,
                discount,
                expires_at,
                actor=current_user.email,
                once_per_customer=True if form.once_per_customer.data else None,
            )
        except VoucherError as exc:
            form.form_errors.append(exc.message)
        else:
            percent = discount_percent(view.discount)
            message = f"Issued {view.code}: {percent}% off, {view.offer_name}."
            return _changed(primary_id, message, "voucher-issued")
    return _section(primary_id, 422, issue_form=form, issue_open=True)


@bp.post("/customers/<int:contact_id>/vouchers/<int:voucher_id>/void")
def void(contact_id: int, voucher_id: int):
    """Withdraw an unused voucher, with a reason (audit-logged)."""
    primary_id = customer_or_404(contact_id)
    form = VoidForm()
    if form.validate_on_submit():
        try:
            view = void_voucher(
                voucher_id,
                form.reason.data.strip(),
                actor=current_user.email,
                customer_id=primary_id,
            )
        except VoucherError as exc:
            # A used or already voided voucher has no form left to show it on.
            return _section(primary_id, 422, error=exc.message)
        return _changed(primary_id, f"Voided {view.code}.", "voucher-voided")
    return _section(primary_id, 422, void_form=form, void_id=voucher_id)


@bp.get("/offers")
def offers():
    """The offers by name, a page at a time, each with its vouchers counted by status."""
    return _offers_page()


def _offers_page(status: int = 200, error: str | None = None):
    listing = offer_summaries(page_number())
    page = render_template(
        "vouchers/offers.html", offers=listing.offers, listing=listing, error=error
    )
    return page, status


class RedeemableForm(Form):
    """An offer's rule from now on: once per customer ("1") or any number of times ("0")."""

    once = HiddenField(validators=[AnyOf(["0", "1"], message=CHOOSE_A_RULE)])


@bp.post("/offers/<int:offer_id>/redeemable")
def redeemable(offer_id: int):
    """Make an offer redeemable once per customer, or any number of times (audit-logged)."""
    form = RedeemableForm()
    if not form.validate_on_submit():
        return _offers_page(422, CHOOSE_A_RULE)
    once = form.once.data == "1"
    try:
        changed = set_redeemable(offer_id, once, actor=current_user.email)
    except VoucherError as exc:
        return _offers_page(exc.status, exc.message)
    rule = ONCE_PER_CUSTOMER if once else ANY_NUMBER
    flash(f"The offer is redeemable {rule}{'' if changed else ' already'}.", "success")
    page = page_number()
    back = url_for("vouchers.offers", page=page if page > 1 else None)
    return redirect(f"{back}#offer-{offer_id}", 303)
