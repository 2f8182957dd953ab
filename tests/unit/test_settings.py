from pathlib import Path

import pytest

from opskit.core.errors import ConfigError, ExitCode
from opskit.core.settings import Settings, mask_url


def test_defaults_follow_the_contract():
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.home == Path(".opskit").absolute()
    assert settings.redis_prefix == "opskit:"
    assert settings.refresh_poll_s == 1.0
    assert settings.refresh_workers == 3
    assert settings.reconcile_cron == "0 3 * * *"


def test_opskit_urls_win_over_generic_ones():
    env = {
        "OPSKIT_DATABASE_URL": "postgresql://a/one",
        "DATABASE_URL": "postgresql://a/two",
        "REDIS_URL": "redis://r:1/0",
    }
    settings = Settings.from_env(env)
    assert settings.database_url == "postgresql://a/one"
    assert settings.redis_url == "redis://r:1/0"


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.redis_prefix = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OPSKIT_REFRESH_POLL_S", "-1"),
        ("OPSKIT_REFRESH_POLL_S", "soon"),
        ("OPSKIT_REFRESH_WORKERS", "0"),
        ("OPSKIT_REFRESH_WORKERS", "2.5"),
        ("OPSKIT_RECONCILE_CRON", "every night"),
        ("OPSKIT_RECONCILE_CRON", "61 3 * * *"),
    ],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert name in caught.value.message
    assert caught.value.exit_code == ExitCode.BAD_INPUT


@pytest.mark.parametrize("name", ["OPSKIT_REFRESH_DEBOUNCE_S", "OPSKIT_REFRESH_MAX_WAIT_S"])
def test_the_full_refresh_settings_are_retired_with_a_clear_message(name):
    with pytest.raises(ConfigError, match=f"{name} is retired") as caught:
        Settings.from_env({name: "5"})
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    assert Settings.from_env({name: ""}).refresh_poll_s == 1.0  # set but empty: not set


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("postgresql://app:p@ss@db/x", "postgresql://app:***@db/x"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "postgresql://db/x?password=zz&sslmode=require",
            "postgresql://db/x?password=***&sslmode=require",
        ),
        ("host=db password=zz user=app", "host=db password=*** user=app"),
        ("host=db password='a b' user=app", "host=db password=*** user=app"),
        ("postgresql://app:a/b+c=@db/x", "postgresql://app:***@db/x"),  # unencoded base64
        ("postgresql://app:LeakMe77@[::1/db", "postgresql://app:***@[::1/db"),  # not parseable
        ("postgresql:///x?user=app&password=zz", "postgresql:///x?user=app&password=***"),
        ("", ""),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked
