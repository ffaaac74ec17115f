"""The search index: three-character pieces (grams) of every contact's e-mail and phone keys."""

from __future__ import annotations

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..models import MYSQL_TABLE_ARGS


class ContactGram(db.Model):
    """One row per gram of a contact's keys, so that a search reads an index, not the table.

    ``gram`` is a kind letter ("e" e-mail, "p" phone digits) and three characters.
    Rows are only ever added: a contact's keys never change, and deleted
    contacts are filtered out when the search checks its candidates.
    """

    __tablename__ = "contact_gram"

    gram: Mapped[str] = mapped_column(String(4), primary_key=True)
    contact_id: Mapped[int] = mapped_column(Integer, primary_key=True)

    __table_args__ = ({**MYSQL_TABLE_ARGS, "sqlite_with_rowid": False},)
