from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from conversations import sso, views
from conversations.api import key_views
from conversations.api import views as api_views
from conversations.shares import views as share_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", sso.Login.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/waiting/", views.waiting, name="waiting"),
    # Single sign-on (conversations/sso.py): allauth's OpenID Connect login and callback
    # (/accounts/oidc/<provider>/login/ and .../callback/), its error and sign-up pages, and the names
    # it reverses for the pages above, which are Chatsite's (not the rest of allauth's account pages).
    path("accounts/", include("allauth.socialaccount.providers.openid_connect.urls")),
    path("accounts/3rdparty/", include("allauth.socialaccount.urls")),
    path("accounts/login/", sso.Login.as_view(), name="account_login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="account_logout"),
    path("accounts/signup/", views.signup, name="account_signup"),
    path("accounts/login/", sso.Login.as_view(), name="account_inactive"),
    path("healthz", views.healthz, name="healthz"),
    path("settings/keys/", key_views.keys, name="api_keys"),
    path("settings/shares/", share_views.listing, name="shares"),
    path("settings/shares/<int:share_id>/revoke/", share_views.revoke, name="share_revoke"),
    path("s/<str:token>/", share_views.read, name="shared"),
    path("s/<str:token>/continue/", share_views.continue_chat, name="shared_continue"),
    path("settings/keys/<int:key_id>/revoke/", key_views.revoke, name="api_key_revoke"),
    path("v1/models", api_views.models, name="api_models"),
    path("v1/chat/completions", api_views.chat_completions, name="api_chat_completions"),
    re_path(r"^v1/(?P<path>.*)$", api_views.not_found),
    path("", include("conversations.urls")),
]

# The site's look and a way back for pages, JSON for the APIs (chatsite/errors.py); CSRF_FAILURE_VIEW too.
handler400 = "chatsite.errors.bad_request"
handler403 = "chatsite.errors.permission_denied"
handler404 = "chatsite.errors.page_not_found"
handler500 = "chatsite.errors.server_error"
