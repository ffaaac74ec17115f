"""e-mail keys: email-validator's normalised address, composed (NFC), domain in Unicode

Revision ID: 0012_composed_email_keys
Revises: 0011_session_epoch
Create Date: 2026-11-30 14:10:00

Until now an e-mail's key was the address lower-cased, so "josé@example.com"
typed with a combining accent and with a precomposed "é", or a domain written
"xn--bcher-kva.de" and "bücher.de", were different keys and could make two
customers of one person. Keys are now email-validator's normalised address,
lower-cased and composed. Only keys holding non-ASCII characters or an "xn--"
label can change; the rows, claims, bond keys, search-index entries and
agents' accounts that hold them get the new key (an agent account whose
composed spelling another account holds already is disabled, as sign-in no
longer finds it). Claims and bond keys that now collide become one
(a block on either is kept). Customers that now share a key are not merged
here: a whole-database reconciliation run (`flask reconcile`) merges them, as
for any other shared key. The key function below is frozen here, as the app
derived keys when this was written. The downgrade leaves keys as they are: the
new ones are valid keys for the old code too, only finer.
"""

import unicodedata

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

revision = "0012_composed_email_keys"
down_revision = "0011_session_epoch"
branch_labels = None
depends_on = None

_contact = sa.table("Contact", sa.column("id"), sa.column("email_key"))
_identifier = sa.table(
    "identifier",
    sa.column("id"),
    sa.column("kind"),
    sa.column("key"),
    sa.column("blocked_at"),
    sa.column("blocked_reason"),
    sa.column("blocked_by"),
)
_bond_key = sa.table("bond_key", sa.column("bond_id"), sa.column("kind"), sa.column("key"))
_user = sa.table(
    "user", sa.column("id"), sa.column("email"), sa.column("is_active"), sa.column("session_epoch")
)
_gram = sa.table("contact_gram", sa.column("gram"), sa.column("contact_id"))

_BATCH = 5000
_GRAM = 3


def _new_key(key: str) -> str:
    """The key an old key becomes; unchanged when it no longer validates."""
    try:
        normalized = validate_email(key, check_deliverability=False).normalized
    except EmailNotValidError:
        return key
    lowered = normalized.lower()
    return lowered if lowered.isascii() else unicodedata.normalize("NFC", lowered)


def _may_change(conn, column):
    """SQL: the key holds a non-ASCII character or an "xn--" label (only those can change)."""
    if conn.dialect.name == "sqlite":
        # length() counts characters, the length of the bytes counts bytes.
        non_ascii = sa.func.length(sa.cast(column, sa.LargeBinary)) != sa.func.length(column)
    else:
        non_ascii = sa.func.length(column) != sa.func.char_length(column)
    return sa.or_(non_ascii, column.like("%xn--%"))


def _email_grams(key: str | None) -> set[str]:
    if not key:
        return set()
    return {"e" + key[i : i + _GRAM] for i in range(len(key) - _GRAM + 1)}


def _rekey_contacts(conn) -> None:
    after = 0
    while True:
        batch = conn.execute(
            sa.select(_contact.c.id, _contact.c.email_key)
            .where(_contact.c.id > after, _may_change(conn, _contact.c.email_key))
            .order_by(_contact.c.id)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        after = batch[-1].id
        for contact_id, key in batch:
            if (new := _new_key(key)) == key:
                continue
            conn.execute(
                sa.update(_contact).where(_contact.c.id == contact_id).values(email_key=new)
            )
            old_grams, new_grams = _email_grams(key), _email_grams(new)
            gone = sorted(old_grams - new_grams)
            if gone:
                conn.execute(
                    sa.delete(_gram).where(_gram.c.contact_id == contact_id, _gram.c.gram.in_(gone))
                )
            # Only grams the row does not hold yet (an index built by hand may have them).
            held = set(
                conn.scalars(
                    sa.select(_gram.c.gram).where(
                        _gram.c.contact_id == contact_id,
                        _gram.c.gram.in_(sorted(new_grams)),
                    )
                )
            )
            fresh = sorted(new_grams - held)
            if fresh:
                conn.execute(
                    sa.insert(_gram), [{"gram": g, "contact_id": contact_id} for g in fresh]
                )


def _rekey_claims(conn) -> None:
    c = _identifier.c
    rows = conn.execute(
        sa.select(c.id, c.key, c.blocked_at, c.blocked_reason, c.blocked_by).where(
            c.kind == "email", _may_change(conn, c.key)
        )
    ).all()
    for row in rows:
        if (new := _new_key(row.key)) == row.key:
            continue
        twin = conn.execute(
            sa.select(c.id, c.blocked_at).where(c.kind == "email", c.key == new)
        ).first()
        if twin is None:
            conn.execute(sa.update(_identifier).where(c.id == row.id).values(key=new))
            continue
        # One claim per key: the twin stays, blocked if either was.
        if row.blocked_at is not None and twin.blocked_at is None:
            conn.execute(
                sa.update(_identifier)
                .where(c.id == twin.id)
                .values(
                    blocked_at=row.blocked_at,
                    blocked_reason=row.blocked_reason,
                    blocked_by=row.blocked_by,
                )
            )
        conn.execute(sa.delete(_identifier).where(c.id == row.id))


def _rekey_bond_keys(conn) -> None:
    k = _bond_key.c
    rows = conn.execute(
        sa.select(k.bond_id, k.key).where(k.kind == "email", _may_change(conn, k.key))
    ).all()
    for bond_id, key in rows:
        if (new := _new_key(key)) == key:
            continue
        mine = (k.bond_id == bond_id) & (k.kind == "email")
        if conn.execute(sa.select(k.bond_id).where(mine, k.key == new)).first() is None:
            conn.execute(sa.update(_bond_key).where(mine, k.key == key).values(key=new))
        else:
            conn.execute(sa.delete(_bond_key).where(mine, k.key == key))


def _rekey_agents(conn) -> None:
    """Agents are stored and looked up by the same key as customers' e-mails."""
    u = _user.c
    for user_id, email in conn.execute(
        sa.select(u.id, u.email).where(_may_change(conn, u.email))
    ).all():
        new = _new_key(email)
        if new == email:
            continue
        if conn.execute(sa.select(u.id).where(u.email == new)).first() is None:
            conn.execute(sa.update(_user).where(u.id == user_id).values(email=new))
        else:
            # Another account holds the composed spelling, which is the one sign-in finds
            # now: this one could no longer sign in, so it is disabled and its sessions end.
            conn.execute(
                sa.update(_user)
                .where(u.id == user_id)
                .values(is_active=False, session_epoch=u.session_epoch + 1)
            )


def upgrade():
    conn = op.get_bind()
    _rekey_contacts(conn)
    _rekey_claims(conn)
    _rekey_bond_keys(conn)
    _rekey_agents(conn)


def downgrade():
    pass
