"""WSGI entry point: gunicorn serves ``wsgi:app``."""

import logging
import sys

from webapp import create_app
from webapp.config import SettingsError

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

try:
    app = create_app()
except SettingsError as exc:
    # A bad setting is the operator's to fix: one line that names it, not a traceback.
    sys.exit(f"Error: {exc}")
