"""``flask users ...``: manage the agents who sign in to the dashboard."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from .service import AgentError, create_agent, disable_agent, list_agents


@click.group("users")
def users() -> None:
    """Create, list and disable dashboard agents."""


@users.command("create")
@click.argument("email")
@click.password_option("--password", prompt="Password", help="Asked for twice, hidden.")
@with_appcontext
def create(email: str, password: str) -> None:
    """Add an agent who can sign in with EMAIL."""
    try:
        user = create_agent(email, password)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created agent {user.email}")


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


@users.command("disable")
@click.argument("email")
@with_appcontext
def disable(email: str) -> None:
    """Stop EMAIL from signing in; open sessions end on their next request."""
    try:
        user = disable_agent(email)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"disabled agent {user.email}")
