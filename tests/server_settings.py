"""The settings of the tests' server processes (tests/live_server.py's server_env): the site's own, with a
fast password hasher.

No test is about the strength of the stored hash (tests/conftest.py's fast_password_hashing does the same
in-process); PBKDF2's million rounds cost a server 0.5 s of CPU at every sign-up and login, and the browser
and end-to-end tests sign up a user or more each.
"""

from chatsite.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
