"""DOT's endpoints under /o/ (the issuer is http://127.0.0.1:PORT/o), the login page, the test admin API."""

from django.contrib.auth.views import LoginView
from django.urls import include, path

from tests.oidc_provider import views

urlpatterns = [
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("login/", LoginView.as_view(template_name="oidc_provider/login.html"), name="login"),
    path("test-admin/users/", views.add_user),
    path("test-admin/clients/", views.add_client),
    path("test-admin/clients/<str:client_id>/revoke/", views.revoke_client),
]
