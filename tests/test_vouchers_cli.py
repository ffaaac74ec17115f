"""``flask vouchers generate``: one voucher per e-mail of a file, codes written to a CSV."""

from __future__ import annotations

import csv

import pytest
from sqlalchemy import select

from tests.builders import contacts, identify
from tests.test_vouchers_api import in_days, validate, vouchers
from webapp.extensions import db
from webapp.models import Identifier, utcnow
from webapp.vouchers.models import Offer
from webapp.vouchers.rules import iso_utc, parse_expiry

# These tests issue vouchers through the API, which always needs a key.
pytestmark = pytest.mark.usefixtures("api_key")


def run(runner, emails_file, *extra, offer="Spring mailing", discount="15", expiry=None):
    return runner.invoke(
        args=[
            "vouchers",
            "generate",
            "--offer",
            offer,
            "--discount",
            discount,
            "--expiry",
            expiry or in_days(10),
            "--emails",
            str(emails_file),
            *extra,
        ]
    )


def test_generate_issues_one_voucher_per_email_and_writes_a_csv(client, runner, tmp_path):
    identify(client, "doc@hillvalley.edu", "555")
    emails = tmp_path / "mailing.txt"
    emails.write_text(
        "email\n# spring list\nmarty@hillvalley.edu\n\nDOC@hillvalley.edu\n"
        "jennifer@hillvalley.edu\nmarty@hillvalley.edu\n"
    )
    expiry = in_days(10)
    result = run(runner, emails, "--once-per-customer", expiry=expiry)
    assert result.exit_code == 0, result.output
    assert "Issuing vouchers" in result.output
    output = tmp_path / "mailing-codes.csv"
    assert f"issued 3 vouchers of 'Spring mailing'; codes written to {output}" in result.output

    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["email"] for r in rows] == [
        "marty@hillvalley.edu",
        "DOC@hillvalley.edu",
        "jennifer@hillvalley.edu",
    ]
    assert {(r["offer_name"], r["discount"]) for r in rows} == {("Spring mailing", "15")}
    assert {r["expiry"] for r in rows} == {iso_utc(parse_expiry(expiry, utcnow()))}
    issued = vouchers()
    assert sorted(v.code for v in issued) == sorted(r["code"].replace("-", "") for r in rows)
    assert {v.issued_by for v in issued} == {"cli"}
    # Doc was known: his voucher went to his customer, no new contact for him.
    assert sorted(c.email for c in contacts()) == [
        "doc@hillvalley.edu",
        "jennifer@hillvalley.edu",
        "marty@hillvalley.edu",
    ]
    assert db.session.scalars(select(Offer)).one().once_per_customer is True
    assert validate(client, rows[1]["code"], email="doc@hillvalley.edu").status_code == 200


def test_a_file_with_bad_lines_issues_nothing(runner, tmp_path):
    emails = tmp_path / "mailing.txt"
    emails.write_text("marty@hillvalley.edu\nnot an email\njennifer@\n")
    result = run(runner, emails)
    assert result.exit_code == 1
    assert "line 2:" in result.output and "line 3:" in result.output
    assert vouchers() == []
    assert contacts() == []
    assert not (tmp_path / "mailing-codes.csv").exists()


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16"])
def test_a_file_that_is_not_utf8_is_refused_clearly(runner, tmp_path, encoding):
    # A spreadsheet's plain "CSV" (Windows-1252) or "Unicode Text" (UTF-16) export.
    emails = tmp_path / "mailing.csv"
    emails.write_bytes("email,name\nmarty@hillvalley.edu,Mart\u00ed\n".encode(encoding))
    result = run(runner, emails)
    assert result.exit_code == 1
    assert "is not UTF-8 text" in result.output
    assert "Traceback" not in result.output
    assert vouchers() == []


def test_a_heading_after_comments_and_line_numbers_as_an_editor_counts(runner, tmp_path):
    emails = tmp_path / "mailing.csv"
    emails.write_text(
        '# spring list\n\nemail,note\nmarty@hillvalley.edu,"two\nlines"\nnot an email,x\n'
    )
    result = run(runner, emails)
    assert result.exit_code == 1
    # The heading is not an address; the bad one is on line 6 of the file.
    assert "line 6:" in result.output and "line 3" not in result.output
    assert vouchers() == []


def test_bad_options_are_refused_before_anything_is_issued(runner, tmp_path):
    emails = tmp_path / "mailing.txt"
    emails.write_text("marty@hillvalley.edu\n")
    past = run(runner, emails, expiry="2020-01-01T00:00:00+00:00")
    assert past.exit_code == 2
    assert "expiry must be in the future" in past.output
    too_much = run(runner, emails, discount="150")
    assert too_much.exit_code == 2
    assert "discount" in too_much.output
    control = run(runner, emails, offer="Spring\x1b")
    assert control.exit_code == 2
    assert "control characters" in control.output
    assert vouchers() == []


def test_an_existing_output_is_never_overwritten(runner, tmp_path):
    emails = tmp_path / "mailing.txt"
    emails.write_text("marty@hillvalley.edu\n")
    output = tmp_path / "codes.csv"
    output.write_text("earlier codes\n")
    result = run(runner, emails, "--output", str(output))
    assert result.exit_code == 1
    assert "never overwritten" in result.output
    assert output.read_text() == "earlier codes\n"
    assert vouchers() == []


def test_an_interrupted_run_resumes_without_issuing_anyone_a_second_voucher(runner, tmp_path):
    emails = tmp_path / "mailing.txt"
    emails.write_text("marty@hillvalley.edu\ndoc@hillvalley.edu\njennifer@hillvalley.edu\n")
    output = tmp_path / "codes.csv"
    # Resumed with the same options, as the first run.
    expiry = in_days(10)
    assert run(runner, emails, "--output", str(output), expiry=expiry).exit_code == 0
    complete = output.read_text(encoding="utf-8")
    header, marty, doc, _jennifer = complete.splitlines(keepends=True)
    # Stopped while writing Doc's row, after committing Doc's and Jennifer's vouchers.
    output.write_text(header + marty + doc[:20], encoding="utf-8")

    result = run(runner, emails, "--output", str(output), "--resume", expiry=expiry)
    assert result.exit_code == 0, result.output
    assert "issued 2 vouchers" in result.output and "1 listed there already" in result.output
    # The cut line went; Doc and Jennifer got back the vouchers committed for them.
    assert output.read_text(encoding="utf-8") == complete
    assert len(vouchers()) == 3

    # Nothing left to do: a second resume issues nothing and writes nothing.
    result = run(runner, emails, "--output", str(output), "--resume", expiry=expiry)
    assert result.exit_code == 0 and "issued 0 vouchers" in result.output
    assert output.read_text(encoding="utf-8") == complete
    assert len(vouchers()) == 3


def test_resume_needs_a_codes_file_this_command_wrote(runner, tmp_path):
    emails = tmp_path / "mailing.txt"
    emails.write_text("marty@hillvalley.edu\n")
    output = tmp_path / "codes.csv"
    result = run(runner, emails, "--output", str(output), "--resume")
    assert result.exit_code == 1 and "there is no run to resume" in result.output
    output.write_text("earlier codes\n")
    result = run(runner, emails, "--output", str(output), "--resume")
    assert result.exit_code == 1 and "not a codes file this command wrote" in result.output
    assert output.read_text() == "earlier codes\n"
    assert vouchers() == []


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("no-such-folder/codes.csv", "No such file or directory"),
        ("mailing.txt/codes.csv", "Not a directory"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_anything_is_issued(
    runner, tmp_path, where, reason
):
    emails = tmp_path / "mailing.txt"
    emails.write_text("marty@hillvalley.edu\n")
    output = tmp_path / where
    result = run(runner, emails, "--output", str(output))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"Error: cannot write the codes to {output}: {reason}; nothing issued" in result.output
    assert vouchers() == []
    assert db.session.scalars(select(Offer)).all() == []
    assert contacts() == []


def test_blocked_emails_are_skipped_and_reported(client, runner, tmp_path):
    identify(client, "test@test.com")
    claim = db.session.scalars(select(Identifier).where(Identifier.key == "test@test.com")).one()
    claim.blocked_at = utcnow()
    db.session.commit()
    emails = tmp_path / "mailing.txt"
    emails.write_text("test@test.com\nmarty@hillvalley.edu\n")
    result = run(runner, emails)
    assert result.exit_code == 0
    assert "issued 1 vouchers" in result.output
    assert "skipped test@test.com: this e-mail is blocked" in result.output
    with (tmp_path / "mailing-codes.csv").open(newline="") as handle:
        assert [r["email"] for r in csv.DictReader(handle)] == ["marty@hillvalley.edu"]
