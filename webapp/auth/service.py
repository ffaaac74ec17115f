"""Agents: creating, disabling and signing in the people who use the dashboard."""

from __future__ import annotations

import logging
from functools import cache

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from sqlalchemy import Connection, insert, select, update

from ..database import write_transaction
from ..extensions import db
from ..identity.rules import InvalidValue, composed, parse_email
from ..models import User, utcnow

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10


@cache
def _hasher_for(profile: str) -> PasswordHasher:
    return PasswordHasher.from_parameters(getattr(profiles, profile))


def _hasher() -> PasswordHasher:
    """Argon2id with the configured parameter profile (RFC 9106 low-memory by default)."""
    return _hasher_for(current_app.config["PASSWORD_HASH_PROFILE"])


@cache
def _dummy_hash(profile: str) -> str:
    # Verified when the e-mail is unknown, so a wrong address costs as long as a wrong password.
    return _hasher_for(profile).hash("not-a-real-password")


class AgentError(ValueError):
    """A request about an agent that cannot be carried out; the message says why."""


def normalise_email(raw: str) -> str:
    """An agent's e-mail as stored: validated, trimmed, lower-case."""
    try:
        return parse_email(raw).key
    except InvalidValue as exc:
        raise AgentError(str(exc)) from None


def lookup_key(email: str) -> str:
    """The e-mail as agents are looked up by (any text, never raises).

    An address's matching key, as agents are stored (``normalise_email``), so
    every spelling of one address finds the agent; other text trimmed,
    lower-cased and composed, which finds no one.
    """
    try:
        return parse_email(email).key
    except InvalidValue:
        return composed(email.strip().lower())


def find_agent(email: str) -> User | None:
    """The agent with this e-mail, or None."""
    return db.session.scalar(select(User).where(User.email == lookup_key(email)))


def _agent_as_stored(user_id: int) -> User:
    """The agent as just written, detached, with no read left open (a CLI or test goes on)."""
    user = db.session.get(User, user_id)
    db.session.expunge(user)
    db.session.rollback()
    return user


def _new_password_hash(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AgentError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher().hash(password)


def create_agent(email: str, password: str) -> User:
    """Add an agent who can sign in at once."""
    address = normalise_email(email)
    password_hash = _new_password_hash(password)

    def work(conn: Connection) -> int:
        if conn.execute(select(User.id).where(User.email == address)).first() is not None:
            raise AgentError(f"an agent with e-mail {address} already exists")
        user_id = conn.execute(
            insert(User).values(email=address, password_hash=password_hash, is_active=True)
        ).inserted_primary_key[0]
        db.session.commit()
        return user_id

    user = _agent_as_stored(write_transaction(work))
    log.info("agent %s created", address)
    return user


def list_agents() -> list[User]:
    """Every agent, by e-mail."""
    return list(db.session.scalars(select(User).order_by(User.email)))


def _change_agent(email: str, **values) -> User:
    """Write ``values`` on the agent with this e-mail; AgentError when there is none."""
    address = lookup_key(email)

    def work(conn: Connection) -> int:
        found = conn.execute(update(User).where(User.email == address).values(**values)).rowcount
        db.session.commit()
        return found

    if not write_transaction(work):
        raise AgentError(f"no agent with e-mail {address}")
    return _agent_as_stored(find_agent(address).id)


def disable_agent(email: str) -> User:
    """Stop an agent from signing in; their open sessions end, for good.

    Their session epoch moves on, as at sign-out: a session (or a copy of its
    cookie) begun before does not come back when the agent is enabled again.
    """
    user = _change_agent(email, is_active=False, session_epoch=User.session_epoch + 1)
    log.info("agent %s disabled", user.email)
    return user


def enable_agent(email: str) -> User:
    """Let a disabled agent sign in again (with the password they had)."""
    user = _change_agent(email, is_active=True)
    log.info("agent %s enabled", user.email)
    return user


def set_password(email: str, password: str) -> User:
    """Give an agent a new password; their open sessions end on the next request."""
    user = _change_agent(
        email,
        password_hash=_new_password_hash(password),
        session_epoch=User.session_epoch + 1,
    )
    log.info("agent %s has a new password", user.email)
    return user


def authenticate(email: str, password: str) -> User | None:
    """The active agent these credentials belong to, or None; records the sign-in."""
    user = find_agent(email)
    hasher = _hasher()
    try:
        hasher.verify(
            user.password_hash
            if user
            else _dummy_hash(current_app.config["PASSWORD_HASH_PROFILE"]),
            password,
        )
    except (VerificationError, InvalidHashError):
        db.session.rollback()
        return None
    if user is None or not user.is_active:
        db.session.rollback()
        return None
    changes = {"last_login_at": utcnow()}
    if hasher.check_needs_rehash(user.password_hash):
        changes["password_hash"] = hasher.hash(password)
    user_id = user.id

    def work(conn: Connection) -> None:
        conn.execute(update(User).where(User.id == user_id).values(**changes))
        db.session.commit()

    # The check above read the agent in a transaction that other requests'
    # commits have since passed by; the sign-in is recorded in a fresh one.
    write_transaction(work)
    return db.session.get(User, user_id)


def end_sessions(user_id: int) -> None:
    """End every session of the agent (signing out): their session epoch moves on."""

    def work(conn: Connection) -> None:
        conn.execute(
            update(User).where(User.id == user_id).values(session_epoch=User.session_epoch + 1)
        )
        db.session.commit()

    write_transaction(work)


def load_agent(user_id: int) -> User | None:
    """The agent of a session, or None when gone or disabled (which signs them out)."""
    user = db.session.get(User, user_id)
    if user is None or not user.is_active:
        return None
    return user
