"""A canary's weight: the share of bucketed users it serves, out of WEIGHT_SCALE (10,000).

People give percentages (`--percent 2.5`, `--steps 5,25,50,100`); the signed
releases.json and the RPCs carry whole hundredths of a percent (250), so no
float crosses the wire and the Python and JS hosts compare integers.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

from releasecontrol.errors import InvalidArgument
from releasecontrol.index import WEIGHT_SCALE

__all__ = [
    "MAX_STEPS",
    "WEIGHT_SCALE",
    "check_steps",
    "check_weight",
    "format_steps",
    "format_weight",
    "parse_percent",
    "parse_steps",
]

MAX_STEPS = 20
"""A step plan's length: enough for any ramp; more is a typo."""

_PERCENT = re.compile(r"(\d{1,3})(?:\.(\d{1,2}))?%?")


def parse_percent(text: str, field: str = "percent") -> int:
    """'5', '5%', '2.5', '0.01' -> the weight out of WEIGHT_SCALE (500, 500, 250, 1).

    Raises InvalidArgument naming `field` for anything else: more than two
    decimals, a sign, a number above 100.
    """
    match = _PERCENT.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(
            f"{field} {text!r} is not a percentage; give a number from 0 to 100 with at most "
            "two decimals, e.g. 5 or 2.5",
            field=field,
        )
    whole, fraction = match.group(1), (match.group(2) or "").ljust(2, "0")
    weight = int(whole) * 100 + int(fraction)
    if weight > WEIGHT_SCALE:
        raise InvalidArgument(f"{field} {text!r} is above 100 %; give 0 to 100", field=field)
    return weight


def check_weight(weight: int, field: str = "weight") -> int:
    """`weight` if it is on the scale (0 to 10,000 hundredths of a percent)."""
    if type(weight) is not int or not 0 <= weight <= WEIGHT_SCALE:
        raise InvalidArgument(
            f"{field} {weight!r} is out of range; give 0 to {WEIGHT_SCALE} "
            "(hundredths of a percent: 500 is 5 %)",
            field=field,
        )
    return weight


def parse_steps(text: str, field: str = "steps") -> tuple[int, ...]:
    """'5,25,50,100' -> (500, 2500, 5000, 10000), checked by `check_steps`."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise InvalidArgument(
            f"{field} {text!r} is not a list of percentages; give them comma-separated and "
            "increasing, e.g. 5,25,50,100",
            field=field,
        )
    return check_steps([parse_percent(part, field) for part in parts], field)


def check_steps(steps: Sequence[int], field: str = "steps") -> tuple[int, ...]:
    """`steps` if each is a weight above 0, they strictly increase, and there are at most
    MAX_STEPS of them."""
    if not steps:
        raise InvalidArgument(f"{field} is empty; give at least one step", field=field)
    if len(steps) > MAX_STEPS:
        raise InvalidArgument(
            f"{field} has {len(steps)} steps; give at most {MAX_STEPS}", field=field
        )
    for step in steps:
        check_weight(step, field)
        if step == 0:
            raise InvalidArgument(
                f"{field} has a step of 0 %; every step serves the canary to someone",
                field=field,
            )
    for before, after in itertools.pairwise(steps):
        if after <= before:
            raise InvalidArgument(
                f"{field} {format_steps(steps)} do not increase ({format_weight(after)} after "
                f"{format_weight(before)}); give each step above the one before",
                field=field,
            )
    return tuple(steps)


def format_weight(weight: int) -> str:
    """500 -> '5%', 250 -> '2.5%', 1 -> '0.01%'."""
    whole, fraction = divmod(weight, 100)
    return f"{whole}%" if not fraction else f"{whole}.{fraction:02d}".rstrip("0") + "%"


def format_steps(steps: Sequence[int]) -> str:
    """(500, 2500, 10000) -> '5,25,100 %'."""
    return ",".join(format_weight(step)[:-1] for step in steps) + " %"
