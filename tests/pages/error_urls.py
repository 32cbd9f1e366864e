"""The site's URLs plus two that fail, for the error-page tests (pytest.mark.urls)."""

from django.urls import path

from chatsite.urls import *  # noqa: F403  (the handlers come with the patterns)
from chatsite.urls import urlpatterns as site_patterns


def boom(request):
    raise RuntimeError("a bug in a view")


urlpatterns = [path("boom/", boom), path("api/boom/", boom), *site_patterns]
