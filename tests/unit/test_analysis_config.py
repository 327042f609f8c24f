"""The analysis' budget from the config: the settings reach the policy, bad ones stop the start
with the setting named."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasecontrol.errors import ConfigError
from releasecontrol_server.config import load_config
from releasecontrol_server.main import analysis_policy


def test_the_settings_make_the_policy(tmp_path: Path) -> None:
    config = load_config(
        {
            "RELEASECONTROL_HOME": str(tmp_path),
            "RELEASECONTROL_ANALYSIS_BUDGET_RATIO": "2",
            "RELEASECONTROL_ANALYSIS_BUDGET_POINTS": "0.5",
            "RELEASECONTROL_ANALYSIS_ALPHA": "0.001",
            "RELEASECONTROL_ANALYSIS_MIN_LOADS": "2000",
        }
    )
    policy = analysis_policy(config)
    assert (policy.budget_ratio, policy.budget_points, policy.alpha, policy.min_loads) == (
        2.0,
        0.5,
        0.001,
        2000,
    )
    assert policy.worse_ratio == 4.0  # "clearly worse" stays above the budget


def test_the_defaults_are_the_documented_policy(tmp_path: Path) -> None:
    policy = analysis_policy(load_config({"RELEASECONTROL_HOME": str(tmp_path)}))
    assert (policy.budget_ratio, policy.budget_points, policy.alpha, policy.min_loads) == (
        1.5,
        0.1,
        0.01,
        500,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELEASECONTROL_ANALYSIS_ALPHA", "0.9"),
        ("RELEASECONTROL_ANALYSIS_BUDGET_RATIO", "0.5"),
        ("RELEASECONTROL_ANALYSIS_MIN_LOADS", "0"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({"RELEASECONTROL_HOME": str(tmp_path), name: value})
