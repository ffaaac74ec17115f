"""``flask users ...``: manage the agents who sign in to the dashboard."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ..cli import DatabaseGroup
from .service import (
    AgentError,
    create_agent,
    disable_agent,
    enable_agent,
    list_agents,
    set_password,
)


@click.group("users", cls=DatabaseGroup)
def users() -> None:
    """Create, list, disable and enable dashboard agents, and set their passwords."""


@users.command("create")
@click.argument("email")
@click.password_option("--password", prompt="Password", help="Asked for twice, hidden.")
@with_appcontext
def create(email: str, password: str) -> None:
    """Add an agent who can sign in with EMAIL."""
    click.echo(f"created agent {_change(create_agent, email, password)}")


@users.command("list")
@with_appcontext
def list_() -> None:
    """Print every agent, whether they may sign in, and when they last did."""
    agents = list_agents()
    if not agents:
        click.echo("no agents yet: flask users create EMAIL")
        return
    for user in agents:
        state = "active" if user.is_active else "disabled"
        last = (
            user.last_login_at.isoformat(sep=" ", timespec="seconds")
            if user.last_login_at
            else "never"
        )
        click.echo(f"{user.email}\t{state}\tlast sign-in: {last}")


def _change(change, email: str, *args) -> str:
    try:
        return change(email, *args).email
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


@users.command("disable")
@click.argument("email")
@with_appcontext
def disable(email: str) -> None:
    """Stop EMAIL from signing in; open sessions end, for good (enabling does not revive them)."""
    click.echo(f"disabled agent {_change(disable_agent, email)}")


@users.command("enable")
@click.argument("email")
@with_appcontext
def enable(email: str) -> None:
    """Let a disabled agent sign in again, with the password they had."""
    click.echo(f"enabled agent {_change(enable_agent, email)}")


@users.command("set-password")
@click.argument("email")
@click.password_option("--password", prompt="New password", help="Asked for twice, hidden.")
@with_appcontext
def set_password_(email: str, password: str) -> None:
    """Give EMAIL a new password (a forgotten one, say); open sessions end."""
    click.echo(f"new password set for agent {_change(set_password, email, password)}")
