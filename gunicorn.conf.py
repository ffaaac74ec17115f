"""gunicorn's settings, read when gunicorn starts in this folder (as ``make run`` does).

The service's own settings are checked once, in gunicorn's master process, before
any worker starts. Checked only in the workers, a bad setting was printed once
per worker, and two workers failing at the same moment made gunicorn stop with
status 1 and a traceback of its own instead of status 4.
"""

import sys

# limit_request_line, limit_request_field_size and limit_request_fields stay at gunicorn's
# defaults (4094 bytes, 8190 bytes, 100 headers): docs/identity.md says why, and that a
# request past them gets gunicorn's HTML page, not the API's JSON error body.

# As wsgi.py exits: gunicorn's "the app failed to load".
APP_FAILED_TO_LOAD = 4

# gunicorn's control socket lives at one path per user, so a second instance on the
# box (staging beside production) silently takes over the first one's, and a control
# command reaches the wrong server. The service does not use it; signals still work.
control_socket_disable = True


def on_starting(server):
    from webapp.config import SettingsError, check_environment

    try:
        check_environment()
    except SettingsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(APP_FAILED_TO_LOAD)
