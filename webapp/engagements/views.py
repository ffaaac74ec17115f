"""Dashboard parts of engagements: the activity timeline, the customer's name and screen-pops."""

from __future__ import annotations

from flask import Blueprint, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from ..dashboard import protect
from ..dashboard.cursors import InvalidCursor
from ..dashboard.customers import CustomerView
from ..dashboard.rendering import (
    canonical_customer,
    customer_or_404,
    error_page,
    not_found,
    page_or_fragment,
    wants_fragment,
)
from ..dashboard.sections import CUSTOMER_NAME
from ..forms import Form
from ..identity.service import BlockedValues
from ..models import row_id
from ..text import FreeText
from .activity import customer_activity
from .models import CHANNELS
from .names import customer_name, set_display_name
from .payloads import MAX_NAME_LENGTH
from .screenpop import (
    SeveralCallers,
    WithheldNumber,
    create_caller,
    parse_shown,
    pop_updates,
    recent_pops,
)

bp = Blueprint("engagements", __name__)
protect(bp)

CHANNEL_LABELS = {
    "call": "Calls",
    "sms": "SMS",
    "whatsapp": "WhatsApp",
    "email": "E-mail",
    "facebook": "Facebook",
    "web": "Web visits",
}
# The header polling scripts read to know where to resume.
CURSOR_HEADER = "X-Screen-Pop-Cursor"


class ActivityFilterForm(Form):
    """The activity's channel filter (GET)."""

    class Meta:
        csrf = False

    channel = SelectField(
        "Channel",
        choices=[("", "All activity"), *CHANNEL_LABELS.items()],
        validators=[Optional()],
    )


class NameForm(Form):
    """The customer's display name, as an agent sets it."""

    name = StringField(
        "Name",
        filters=[lambda value: value.strip() if value else value],
        validators=[DataRequired(), Length(max=MAX_NAME_LENGTH), FreeText()],
    )


def activity_section(customer: CustomerView) -> dict:
    """Section loader for the customer page: the first page of activity, on the page's history."""
    return {
        "activity": customer_activity(customer.primary_id, customer=customer),
        "filter": ActivityFilterForm(formdata=None),
    }


def name_section(customer: CustomerView) -> dict:
    """Section loader for the customer page: the display name and the form that edits it.

    The name goes to the page's heading too (``CUSTOMER_NAME``), read once.
    """
    live_ids = [contact.id for contact in customer.contacts if contact.deleted_at is None]
    name = customer_name(customer.primary_id, contact_ids=live_ids)
    return {CUSTOMER_NAME: name, "name_form": NameForm(formdata=None, name=name)}


@bp.get("/customers/<int:contact_id>/activity")
def activity(contact_id: int):
    """A customer's activity, filterable by channel, a page at a time (``before`` continues)."""
    # Only the parameters this view reads: others (contact_id, _external) would reach url_for.
    primary_id = canonical_customer(contact_id, keep=("channel", "before"))
    form = ActivityFilterForm(request.args)
    valid = form.validate()
    channel = form.channel.data if valid and form.channel.data in CHANNELS else None
    try:
        page = customer_activity(primary_id, channel=channel, before=request.args.get("before"))
    except InvalidCursor:
        return error_page(
            "Bad link", "This “load more” link is damaged; open the customer again.", 400
        )
    if page is None:
        return not_found("Customer", contact_id)
    more = request.args.get("before") is not None
    return page_or_fragment(
        "engagements/activity.html",
        "engagements/_activity_more.html" if more else "engagements/_activity.html",
        status=200 if valid else 422,
        section={"activity": page, "filter": form},
    )


@bp.post("/customers/<int:contact_id>/name")
def rename(contact_id: int):
    """Set the customer's display name; invalid input comes back in place as 422."""
    form = NameForm()
    primary_id = customer_or_404(contact_id)
    if form.validate_on_submit() and set_display_name(
        primary_id, form.name.data, current_user.email
    ):
        if not wants_fragment():
            return redirect(url_for("dashboard.customer", contact_id=primary_id), 303)
        # The page's heading shows the name too: it is swapped out of band, so it is never stale.
        response = make_response(
            render_template(
                "engagements/_name.html",
                primary_id=primary_id,
                form=form,
                saved=True,
            )
            + render_template(
                "dashboard/_customer_heading.html",
                primary_id=primary_id,
                customer_name=form.name.data,
                oob=True,
            )
        )
        response.headers["HX-Trigger"] = "customer-renamed"
        return response
    # Sent without htmx (no script yet, or none at all), the refusal is a whole page.
    return page_or_fragment(
        "engagements/name.html", "engagements/_name.html", 422, primary_id=primary_id, form=form
    )


@bp.get("/screen-pops")
def screen_pops():
    """Calls newer than ``after`` for the polling dashboard, and the pops the page shows
    (``shown``, ``12:ringing,13:answered``) that were answered or ended since, or timed
    out; 204 when there is none of either."""
    after = request.args.get("after", type=row_id)
    agent = current_user.email
    pops, cursor = recent_pops(after, agent)
    shown = parse_shown(request.args.get("shown"))
    updates = pop_updates(shown, agent)
    if pops or updates:
        response = make_response(
            render_template(
                "engagements/_screen_pops.html", pops=pops, updates=updates, agent=agent
            )
        )
    else:
        response = make_response("", 204)
    response.headers[CURSOR_HEADER] = str(cursor)
    return response


@bp.post("/screen-pops/<int:pop_id>/customer")
def create_customer_from_call(pop_id: int):
    """One click on an unknown caller's pop: make the number a customer and open it."""
    try:
        primary_id = create_caller(pop_id, current_user.email)
    except BlockedValues:
        return error_page(
            "Number blocked", "This number is blocked, so it cannot become a customer.", 422
        )
    except WithheldNumber:
        # The pop offers no button; a form posted anyway (by hand, a stale page) lands here.
        return error_page(
            "Number withheld",
            "The caller withheld their number, so there is none to make a customer of. "
            "Ask the caller for their e-mail or number and search for them.",
            422,
        )
    except SeveralCallers as exc:
        # The pop was shown before they held it: ask the caller, and pick from the search.
        count = len(exc.customer_ids)
        flash(f"{count} customers have this number now; ask the caller who they are.", "error")
        return redirect(url_for("dashboard.home", q=exc.phone.stored), 303)
    if primary_id is None:
        return not_found("Screen-pop", pop_id)
    # Said so that it holds for the second agent to click too (the caller's customer exists).
    flash(f"The caller is customer #{primary_id}.", "success")
    return redirect(url_for("dashboard.customer", contact_id=primary_id), 303)
