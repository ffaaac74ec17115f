"""Command-line commands: ``flask --app wsgi ...``."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    """Attach the project's command groups to the app."""
    from .auth.cli import users
    from .dashboard.cli import search

    app.cli.add_command(users)
    app.cli.add_command(search)

    from .vouchers.cli import vouchers

    app.cli.add_command(vouchers)

    from .reconcile.cli import reconcile_command

    app.cli.add_command(reconcile_command)
