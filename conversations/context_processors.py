from django.conf import settings


def site(request) -> dict:
    """Settings every page needs: whether the sign-up link is shown."""
    return {"allow_signup": settings.CHATSITE_ALLOW_SIGNUP and settings.CHATSITE_PASSWORD_LOGIN}
