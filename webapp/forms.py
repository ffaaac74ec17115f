"""The base of every dashboard form: its fields come from the posted form fields, never
from a JSON body or uploaded files.

Flask-WTF reads a JSON body as the form when no form was posted. The
dashboard's forms are posted by browsers; a JSON body reaching them came from
elsewhere, and its values need not be text (``{"name": 5}`` broke the
validators with a 500), nor be what the sign-in limits count by (they read
the posted form, so JSON sign-ins escaped the per-account limit).

Flask-WTF also puts the files of a multipart post in front of its fields: a
file part named like a field made that field a file, and every validator
that reads text failed with a 500 (the sign-in form's too). No dashboard form
takes a file.
"""

from __future__ import annotations

from flask import request
from flask_wtf import FlaskForm


class Form(FlaskForm):
    """FlaskForm that reads the posted fields alone; a JSON post or a file is not filled in."""

    class Meta(FlaskForm.Meta):
        def wrap_formdata(self, form, formdata):
            # Form data given explicitly (a GET form reads request.args) is a MultiDict.
            if formdata is None or hasattr(formdata, "getlist"):
                return super().wrap_formdata(form, formdata)
            # Flask-WTF's own choice of what a submitted form holds, narrowed to its fields.
            return request.form if form.is_submitted() and request.form else None
