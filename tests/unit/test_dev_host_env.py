"""`releasectl dev-host` reads the environment as every host does: a typo is not development."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasecontrol.errors import ConfigError
from releasectl.dev_host import host_environment


def test_a_node_env_typo_is_refused_not_taken_for_development(tmp_path: Path) -> None:
    """NODE_ENV=prod used to mean development, with the dev key allowed: now refused."""
    with pytest.raises(ConfigError, match="NODE_ENV='prod' is not understood"):
        host_environment({"NODE_ENV": "prod"}, tmp_path)


def test_production_fills_in_nothing(tmp_path: Path) -> None:
    """In production no dev fallback (the local trust file, its dev key) is filled in."""
    env, notes = host_environment({"NODE_ENV": "production"}, tmp_path)
    assert env == {"NODE_ENV": "production"} and notes == []
