"""WSGI entry point: gunicorn serves ``wsgi:app``."""

import sys

from webapp import create_app
from webapp.config import SettingsError
from webapp.request_ids import log_with_request_ids

log_with_request_ids()

# gunicorn stops on a worker that exits with 4 ("the app failed to load"); with any
# other status it would start the worker again, and again.
APP_FAILED_TO_LOAD = 4

try:
    app = create_app()
except SettingsError as exc:
    # A bad setting is the operator's to fix: one line that names it, not a traceback.
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(APP_FAILED_TO_LOAD)
