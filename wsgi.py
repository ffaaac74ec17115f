"""WSGI entry point: gunicorn serves ``wsgi:app``."""

import logging

from webapp import create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app()
