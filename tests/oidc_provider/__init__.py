"""A real OpenID Connect provider (django-oauth-toolkit) that tests run in a process of its own.

Started by tests/oidc_support.py; DJANGO_SETTINGS_MODULE=tests.oidc_provider.settings.
"""
