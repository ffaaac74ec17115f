"""The free-text rule on its own (no app): which characters names, reasons and summaries refuse."""

import pytest

from webapp.text import counted, free_text_problem

CONTROL = [
    "\x00",
    "\x07",
    "\x1b",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9b",
    "\u202a",
    "\u202e",
    "\u2066",
    "\u2069",
]


@pytest.mark.parametrize("bad", [*CONTROL, "\t", "\n", "\r", "\u2028", "\u2029"])
def test_single_line_text_refuses_control_characters_and_line_breaks(bad):
    problem = free_text_problem(f"Anna{bad}Berg")
    assert problem == f"must not contain control characters (found U+{ord(bad):04X})"


@pytest.mark.parametrize("bad", CONTROL)
def test_multi_line_text_refuses_control_characters_other_than_line_whitespace(bad):
    assert free_text_problem(f"first line\n{bad}", multiline=True) is not None


@pytest.mark.parametrize("good", ["a\tb", "a\nb", "a\r\nb", "a\u2028b", "a\u2029b"])
def test_multi_line_text_keeps_tabs_and_line_breaks(good):
    assert free_text_problem(good, multiline=True) is None


@pytest.mark.parametrize(
    "good",
    [
        "Anna Berg",
        "Zoë O'Brien-Łukasz",
        "\u05d3\u05e0\u05d4 \u200fDana",  # Hebrew with a right-to-left mark
        "\u0639\u0644\u064a\u061c 42",  # Arabic with an Arabic letter mark
        "\u200eLRM",
        "\U0001f469\u200d\U0001f4bb",  # an emoji sequence joined by ZWJ
        "\u00a0no-break space",
        "",
    ],
)
def test_ordinary_text_in_any_script_passes(good):
    assert free_text_problem(good) is None


@pytest.mark.parametrize(
    ("count", "noun", "said"),
    [
        (0, "customer", "0 customers"),
        (1, "contact row", "1 contact row"),
        (3, "contact row", "3 contact rows"),
    ],
)
def test_counted_says_the_noun_in_the_plural_unless_there_is_one(count, noun, said):
    assert counted(count, noun) == said
