"""Group quotas (docs/review.md): a user gets the largest of their groups' daily budgets unless they have an
override; the usage page shows each group's use today."""

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.test import Client

from conversations.live import turns
from conversations.models import DailyUsage, GroupQuota, QuotaOverride
from conversations.review import quotas
from tests.review.test_quotas import GREEDY

pytestmark = pytest.mark.django_db


def group(name: str, daily_tokens: int | None, *members) -> Group:
    made = Group.objects.create(name=name)
    if daily_tokens is not None:
        GroupQuota.objects.create(group=made, daily_tokens=daily_tokens)
    made.user_set.add(*members)
    return made


def test_the_largest_of_a_users_groups_unless_they_have_their_own(alice, bob, settings):
    settings.CHAT_USER_DAILY_TOKENS = 1000
    assert quotas.daily_limit(alice.id) == 1000  # no group: the site's
    group("interns", 2000, alice)
    group("researchers", 5000, alice, bob)
    group("no quota of its own", None, alice)
    assert quotas.daily_limit(alice.id) == 5000 and quotas.daily_limit(bob.id) == 5000
    group("unlimited", 0, bob)
    assert quotas.daily_limit(bob.id) == 0  # no limit is the largest
    QuotaOverride.objects.create(user=alice, daily_tokens=300)
    assert quotas.daily_limit(alice.id) == 300


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_turn_past_the_groups_quota_is_refused(engine, alice, conversation, settings):
    settings.CHAT_USER_DAILY_TOKENS = 0
    await sync_to_async(group)("interns", 150, alice)
    await DailyUsage.objects.acreate(user=alice, day=quotas.today(), tokens=150)
    chat = await sync_to_async(conversation)(alice)
    with pytest.raises(turns.Refused) as refused:
        await turns.start(str(chat.id), "send", GREEDY, "Hi")
    assert refused.value.code == "rate_limited"


def test_the_usage_page_shows_each_groups_use_today(staff, alice, bob):
    group("interns", 2000, alice)
    group("everyone", 0, alice, bob)
    DailyUsage.objects.create(user=alice, day=quotas.today(), tokens=120, replies=2)
    DailyUsage.objects.create(user=bob, day=quotas.today(), tokens=30, replies=1)
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/conversations/dailyusage/").content.decode()
    section = page[page.index("Today (UTC) by group") :]
    assert "<td>everyone</td><td>2</td><td>3</td><td>150</td><td>no limit</td>" in section
    assert "<td>interns</td><td>1</td><td>2</td><td>120</td><td>2000</td>" in section
