"""Free text as stored (names, offer names, reasons, summaries): the characters it may not hold.

One rule for the JSON API, the dashboard forms and the CLI. Control characters
(C0, DEL, C1) corrupt logs, terminals and CSV exports and mean nothing in a
name. The explicit bidirectional embeddings, overrides and isolates can make a
stored name or reason read differently from what it holds ("U+202E" shows the
rest of a line reversed) and, left unclosed, spill into the text around them.
The bidi marks LRM, RLM and ALM stay allowed: mixed-script names need them and
they reorder nothing. Line and paragraph separators count as line breaks.
"""

from __future__ import annotations

import re

from wtforms.validators import ValidationError

# C0 controls, DEL and C1 controls, then LRE, RLE, PDF, LRO, RLO and LRI, RLI, FSI, PDI.
_CONTROLS = r"\x00-\x1f\x7f-\x9f"
_BIDI_CONTROLS = r"\u202a-\u202e\u2066-\u2069"
# One line: no tab, no line break, no line or paragraph separator either.
_SINGLE_LINE = re.compile(rf"[{_CONTROLS}{_BIDI_CONTROLS}\u2028\u2029]")
# A multi-line field (a textarea, an engagement summary) keeps tabs and line breaks.
_MULTI_LINE = re.compile(rf"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI_CONTROLS}]")


def free_text_problem(text: str, *, multiline: bool = False) -> str | None:
    """Why ``text`` cannot be stored as free text (naming the first bad character), or None."""
    found = (_MULTI_LINE if multiline else _SINGLE_LINE).search(text)
    if found:
        return f"must not contain control characters (found U+{ord(found.group()):04X})"
    return None


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is one: "1 contact row", "3 contact rows"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class FreeText:
    """WTForms validator: the field's text passes ``free_text_problem``."""

    def __init__(self, *, multiline: bool = False):
        self.multiline = multiline

    def __call__(self, form, field) -> None:
        problem = free_text_problem(field.data or "", multiline=self.multiline)
        if problem:
            raise ValidationError(f"This field {problem}.")
