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

from wtforms.validators import ValidationError

# Whitespace a multi-line field (a textarea, an engagement summary) may keep.
_LINE_WHITESPACE = frozenset("\t\n\r")
_LINE_SEPARATORS = frozenset("\u2028\u2029")
# LRE, RLE, PDF, LRO, RLO, then LRI, RLI, FSI, PDI.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _forbidden(ch: str, multiline: bool) -> bool:
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return not (multiline and ch in _LINE_WHITESPACE)
    return ch in _BIDI_CONTROLS or (not multiline and ch in _LINE_SEPARATORS)


def free_text_problem(text: str, *, multiline: bool = False) -> str | None:
    """Why ``text`` cannot be stored as free text (naming the first bad character), or None."""
    for ch in text:
        if _forbidden(ch, multiline):
            return f"must not contain control characters (found U+{ord(ch):04X})"
    return None


class FreeText:
    """WTForms validator: the field's text passes ``free_text_problem``."""

    def __init__(self, *, multiline: bool = False):
        self.multiline = multiline

    def __call__(self, form, field) -> None:
        problem = free_text_problem(field.data or "", multiline=self.multiline)
        if problem:
            raise ValidationError(f"This field {problem}.")
