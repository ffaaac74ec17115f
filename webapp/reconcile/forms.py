"""The reconciliation forms (Flask-WTF: every POST form carries the CSRF token)."""

from __future__ import annotations

from wtforms import HiddenField, IntegerField, SearchField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from ..forms import Form
from ..identity.rules import InvalidValue, Value, parse_email, parse_phone
from ..models import MAX_ROW_ID
from ..text import FreeText


class LinkForm(Form):
    """An e-mail and/or a phone to add to a customer."""

    email = StringField("E-mail", validators=[Optional(), Length(max=320)])
    phone = StringField("Phone", validators=[Optional(), Length(max=64)])

    def values(self) -> list[Value]:
        """The parsed values, none while one of them is wrong; problems land on the fields."""
        found = []
        for field, parse in ((self.email, parse_email), (self.phone, parse_phone)):
            text = (field.data or "").strip()
            if text:
                try:
                    found.append(parse(text))
                except InvalidValue as exc:
                    field.errors.append(str(exc))
        if self.email.errors or self.phone.errors:
            # Linking the other value alone would say "added" while the mistyped one was not.
            return []
        if not found:
            self.form_errors.append("Enter an e-mail address, a phone number or both.")
        return found


class MergeForm(Form):
    """The customer to merge with (any of its contact ids)."""

    other = IntegerField(
        "Other customer", validators=[DataRequired(), NumberRange(min=1, max=MAX_ROW_ID)]
    )


class MergeSearchForm(Form):
    """The merge dialog's search box (GET)."""

    class Meta:
        csrf = False

    q = SearchField("Find the other customer", validators=[Optional(), Length(max=320)])
    other = HiddenField()


class BlockForm(Form):
    """A value to block and why."""

    value = StringField("E-mail or phone", validators=[DataRequired(), Length(max=320)])
    reason = TextAreaField(
        "Reason", validators=[DataRequired(), Length(max=500), FreeText(multiline=True)]
    )
    customer = HiddenField()


class ConfirmForm(Form):
    """Carries only the CSRF token: the button is the confirmation."""


class DeleteForm(Form):
    """Confirms a soft delete; the reason is optional."""

    reason = StringField("Reason (optional)", validators=[Optional(), Length(max=500), FreeText()])
