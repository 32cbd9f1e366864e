"""The provider's claims: what allauth's openid_connect provider reads of a user."""

from oauth2_provider.oauth2_validators import OAuth2Validator

# A user in this group has email_verified False. A group, not a model of our own: it needs no
# migration of this project, and a user is verified unless a test says otherwise.
UNVERIFIED_EMAIL_GROUP = "unverified-email"


def email_verified(user) -> bool:
    return not user.groups.filter(name=UNVERIFIED_EMAIL_GROUP).exists()


class ClaimsValidator(OAuth2Validator):
    """DOT's validator plus the claims of the profile and email scopes.

    get_additional_claims takes no request: DOT then calls each value with the request and lists
    the claims in the discovery document's claims_supported. DOT's oidc_claim_scope gives each
    claim out only with its scope (email, email_verified: "email"; name, preferred_username:
    "profile"), in the ID token and at userinfo alike.
    """

    def get_additional_claims(self):
        return {
            "email": lambda request: request.user.email,
            "email_verified": lambda request: email_verified(request.user),
            "preferred_username": lambda request: request.user.username,
            "name": lambda request: request.user.get_full_name() or request.user.username,
        }
