"""WSGI entry point: gunicorn serves ``wsgi:app``."""

import sys

from webapp import create_app
from webapp.config import SettingsError
from webapp.request_ids import log_with_request_ids

log_with_request_ids()

try:
    app = create_app()
except SettingsError as exc:
    # A bad setting is the operator's to fix: one line that names it, not a traceback.
    sys.exit(f"Error: {exc}")
