"""``flask vouchers ...``: issue vouchers in bulk from a file of e-mail addresses."""

from __future__ import annotations

import csv
import hashlib
from contextlib import suppress
from pathlib import Path

import click
from flask.cli import with_appcontext

from ..cli import DatabaseGroup
from ..identity.rules import InvalidValue, Value, parse_email
from ..models import utcnow
from .rules import (
    InvalidVoucherValue,
    discount_percent,
    iso_utc,
    parse_discount,
    parse_expiry,
    parse_offer_name,
)
from .service import VoucherError, issue_voucher

CSV_COLUMNS = ("email", "code", "offer_name", "discount", "expiry")


@click.group("vouchers", cls=DatabaseGroup)
def vouchers() -> None:
    """Issue vouchers from the command line."""


def _read_emails(path: Path) -> list[Value]:
    """Every distinct e-mail in the file, in order; a ClickException listing bad lines."""
    values: dict[str, Value] = {}
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise click.ClickException(
            f"{path} is not UTF-8 text; save it as CSV UTF-8 (a spreadsheet's"
            " 'CSV UTF-8' format) and run again"
        ) from None
    reader = csv.reader(text.splitlines(keepends=True))
    header_possible = True
    for record in reader:
        # One address per line; a CSV's first column works too. Numbers are the
        # line a record ends on, as an editor counts them.
        number = reader.line_num
        field = record[0].strip() if record else ""
        if not field or field.startswith("#"):
            continue
        # A heading "email" may follow comments and blank lines, before any address.
        if header_possible and field.lower() == "email":
            header_possible = False
            continue
        header_possible = False
        try:
            value = parse_email(field)
        except InvalidValue as exc:
            problems.append(f"line {number}: {exc}")
            continue
        values.setdefault(value.key, value)
    if problems:
        raise click.ClickException("nothing issued; fix these lines:\n" + "\n".join(problems))
    if not values:
        raise click.ClickException(f"{path} holds no e-mail addresses")
    return list(values.values())


def _listed_emails(output: Path) -> set[str]:
    """The keys of the e-mails an earlier run's codes file lists (for --resume)."""
    try:
        with output.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise click.ClickException(f"{output} does not exist: there is no run to resume") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {output}: {exc}") from None
    if not rows or tuple(rows[0]) != CSV_COLUMNS:
        raise click.ClickException(f"{output} is not a codes file this command wrote")
    # A last line cut short by the interruption is no record: it goes, and its
    # e-mail is tried again (its voucher, if committed, comes back by its key).
    data = output.read_bytes()
    if not data.endswith(b"\n"):
        with output.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
        rows = rows[:-1]
    keys = set()
    for row in rows[1:]:
        with suppress(InvalidValue):
            keys.add(parse_email(row[0]).key)
    return keys


def _run_key(run_id: str, offer_name: str, email: Value) -> str:
    """The idempotency key of one e-mail's voucher in one run (one output file)."""
    digest = hashlib.sha256("\0".join((run_id, offer_name, email.key)).encode()).hexdigest()
    return f"cli-generate:{digest}"


def _parsed(parse, raw: str, option: str):
    try:
        return parse(raw)
    except InvalidVoucherValue as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@vouchers.command("generate")
@click.option("--offer", "offer", required=True, help="Offer name, e.g. 'Summer sale'.")
@click.option("--discount", required=True, help="Percent off, more than 0 and at most 100.")
@click.option("--expiry", required=True, help="ISO 8601 with offset: 2026-12-31T23:59:59+01:00.")
@click.option(
    "--emails",
    "emails_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="One e-mail address per line (or a CSV whose first column holds them).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="CSV to write the codes to; default: EMAILS with '-codes.csv'. Never overwritten.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Carry on an interrupted run: skip the e-mails OUTPUT lists, and add to it.",
)
@click.option(
    "--once-per-customer/--any-number-per-customer",
    default=None,
    help="Mark the offer as redeemable once per customer (default: leave the offer as it is).",
)
@with_appcontext
def generate(
    offer: str,
    discount: str,
    expiry: str,
    emails_file: Path,
    output: Path | None,
    resume: bool,
    once_per_customer: bool | None,
) -> None:
    """Issue one voucher of OFFER to every e-mail in EMAILS and write the codes to a CSV.

    Each voucher is issued under an idempotency key made of the output file,
    the offer and the e-mail, so that ``--resume`` after a run that stopped
    between committing a voucher and writing its row gets that voucher again,
    not a second one.
    """
    offer_name = _parsed(parse_offer_name, offer, "--offer")
    hundredths = _parsed(parse_discount, discount, "--discount")
    expires_at = _parsed(lambda raw: parse_expiry(raw, utcnow()), expiry, "--expiry")
    emails = _read_emails(emails_file)
    output = output or emails_file.with_name(emails_file.stem + "-codes.csv")
    done = _listed_emails(output) if resume else set()
    emails = [email for email in emails if email.key not in done]
    run_id = str(output.resolve())
    # Opened before the first voucher is issued: codes that could not be
    # written down would be issued to nobody's knowledge.
    try:
        handle = output.open("a" if resume else "x", encoding="utf-8", newline="")
    except FileExistsError:
        raise click.ClickException(
            f"{output} exists; codes are never overwritten (--resume adds to it)"
        ) from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the codes to {output}: {exc.strerror}; nothing issued"
        ) from None

    skipped: list[str] = []
    # Each row is written as soon as its voucher is committed, so an
    # interrupted run still leaves an exact record of what was issued.
    with handle:
        writer = csv.writer(handle)
        if not resume:
            writer.writerow(CSV_COLUMNS)
        with click.progressbar(emails, label="Issuing vouchers") as bar:
            for email in bar:
                try:
                    view = issue_voucher(
                        email,
                        offer_name,
                        hundredths,
                        expires_at,
                        once_per_customer=once_per_customer,
                        issued_by="cli",
                        idempotency_key=_run_key(run_id, offer_name, email),
                    )
                except VoucherError as exc:
                    skipped.append(f"{email.stored}: {exc.message}")
                    continue
                writer.writerow(
                    (
                        email.stored,
                        view.code,
                        view.offer_name,
                        discount_percent(view.discount),
                        iso_utc(view.expires_at),
                    )
                )
                handle.flush()
    issued = len(emails) - len(skipped)
    already = f" ({len(done)} listed there already)" if resume else ""
    click.echo(f"issued {issued} vouchers of '{offer_name}'; codes written to {output}{already}")
    for line in skipped:
        click.echo(f"skipped {line}", err=True)
