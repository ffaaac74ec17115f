"""The base of every dashboard form: its fields come from the submitted form, never JSON.

Flask-WTF reads a JSON body as form data when no form was posted. The
dashboard's forms are posted by browsers; a JSON body reaching them came from
elsewhere, and its values need not be text (``{"name": 5}`` broke the
validators with a 500), nor be what the sign-in limits count by (they read
the posted form, so JSON sign-ins escaped the per-account limit).
"""

from __future__ import annotations

from flask import request
from flask_wtf import FlaskForm


class Form(FlaskForm):
    """FlaskForm that reads no JSON body; a JSON post is a form with nothing filled in."""

    class Meta(FlaskForm.Meta):
        def wrap_formdata(self, form, formdata):
            # Form data given explicitly (a GET form reads request.args) is a MultiDict.
            if request.is_json and not hasattr(formdata, "getlist"):
                return None
            return super().wrap_formdata(form, formdata)
