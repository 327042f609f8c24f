"""Canary counts from Prometheus: the analysis's second source (docs/analysis.md).

For teams whose front-end metrics already live in Prometheus, the loads and
failures of each feature version come from two PromQL queries instead of the
beacons: `prometheus_loads_query` and `prometheus_failures_query`, templates
with the placeholders `{feature}`, `{version}` and `{window}` (the time since
the canary's soak began, as a PromQL duration: `1800s`). For example::

    sum(increase(frontend_feature_loads_total{feature="{feature}",version="{version}"}[{window}]))

`PrometheusSource.counts` evaluates both at one instant (`now`) for each
version and answers in the beacons' shape (`beacons.Counts`), so the same
sequential test (analysis.py) judges the canary.

What a query must answer
------------------------
One number: an instant vector of at most one series (empty counts as 0: `sum`
over no series is empty) or a scalar. Several series are refused, not summed:
a query without `sum(...)` returns a series per pod or per label, and summing
them here would also sum series that overlap (a recording rule beside its raw
metric) without anyone seeing it; the fix, `sum(...)`, is one word in the
query. The one exception is the failures query, which may split its answer by
a `kind` label whose values are the beacons' kinds (`entry_errors`,
`load_failures`, `refusals`: `sum by (kind) (...)`), so the verdict's reason
names them; a failures answer without a `kind` label counts as
`load_failures`. Values are rounded to whole numbers (`increase()` extrapolates
to the window's edges, so it answers floats); NaN, infinities and negative
values are refused, as are matrices, strings and native histograms.

Nothing a caller chooses can change a query
--------------------------------------------
The templates are checked when the source is made (`parse_query`): both
`{feature}` and `{version}` must be there, each inside a double-quoted string
(a label value), never after a regex matcher (`=~`, `!~`: a version's `.`
and `+` are regex characters); `{window}` may be anywhere; any other
`{name}` is refused (a label matcher `{job="x"}` is no placeholder: it is not
a bare name). Before a query is filled in, the feature id is checked as a
feature id and each version as SemVer, which leaves them no character that
means anything inside a PromQL string, and the values are escaped for a
double-quoted PromQL string all the same (`promql_string`). The window is
computed here (whole seconds).

Errors
------
Every failure to get a count is `Unavailable`, one sentence naming the server,
the setting, the feature and version, the reason and the query as sent: the
server unreachable or too slow (`timeout` bounds each query as a whole), an
answer other than 2xx (redirects are not followed), `status: error`, or an
answer that is not one number as above. Errors of the HTTP layer are
translated in one place (`PrometheusSource._ask`). Nothing is retried: the
analyzer judges again a few seconds later. A bad setting is a `ConfigError`
naming it, at start or, for a token file that became unreadable, at the next
query; the bearer token never appears in a message, a log line or a repr.

The HTTP client: httpx
----------------------
httpx (encode/httpx) is async-native, so queries are awaited on the server's
event loop with no thread; its connection pool is kept between rounds; it is
typed (mypy strict) and well kept; its dependencies (anyio, h11, httpcore,
certifi, idna) are mostly installed already for starlette. aiohttp is not
installed, and urllib blocks (it would need a thread per query). httpx's own
timeouts bound each read, not the request (see releasecontrol.fetch), so each
query also runs under `asyncio.timeout`. With httpx's defaults, proxies come
from HTTP(S)_PROXY / NO_PROXY and a private CA bundle from SSL_CERT_FILE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from releasecontrol.errors import ConfigError, InvalidArgument, Unavailable
from releasecontrol.limits import shown
from releasecontrol.manifest import validate_feature_id, validate_version
from releasecontrol_server.beacons import Counts

log = logging.getLogger(__name__)

API_PATH = "/api/v1/query"
DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_TIMEOUT_SECONDS = 120.0
MAX_ANSWER_BYTES = 1024 * 1024
"""The largest answer read: one number is a few hundred bytes; more is a query without sum."""
PLACEHOLDERS = ("feature", "version", "window")
KIND_LABEL = "kind"
"""The label by which the failures query may split failures into the beacons' kinds."""
FAILURE_KINDS = ("entry_errors", "load_failures", "refusals")
EXAMPLE_LOADS_QUERY = (
    'sum(increase(frontend_feature_loads_total{feature="{feature}",version="{version}"}[{window}]))'
)
EXAMPLE_FAILURES_QUERY = (
    'sum by (kind) (increase(frontend_feature_failures_total{feature="{feature}",'
    'version="{version}"}[{window}]))'
)

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")
_QUOTES = "\"'`"


# --- the query templates -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    name: str


@dataclass(frozen=True)
class QueryTemplate:
    """A PromQL query with placeholders, checked (make it with `parse_query`)."""

    setting: str
    """The setting it came from, for messages (`prometheus_loads_query`)."""
    text: str
    pieces: tuple[str | _Slot, ...]

    def render(self, feature_id: str, version: str, window: str) -> str:
        """The query for one feature version over `window` (a PromQL duration we made).

        `feature_id` and `version` must be checked already (`PrometheusSource.counts` does);
        they are escaped for the double-quoted strings they go into all the same.
        """
        values = {
            "feature": promql_string(feature_id),
            "version": promql_string(version),
            "window": window,
        }
        return "".join(p if isinstance(p, str) else values[p.name] for p in self.pieces)


def parse_query(text: object, setting: str) -> QueryTemplate:
    """`text` as a query template; raises ConfigError naming `setting` and the fix.

    Refused: an empty query, a `{name}` other than {feature}, {version} and {window}, a
    query without {feature} or {version}, either of them outside a double-quoted string or
    after a regex matcher (=~, !~), and a string never closed.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"{setting} is {shown(text)}; set it to a PromQL query with {{feature}}, "
            f"{{version}} and {{window}}, e.g. {EXAMPLE_LOADS_QUERY!r}."
        )

    def refuse(fix: str) -> ConfigError:
        return ConfigError(f"{setting} is {shown(text)}; {fix}.")

    pieces: list[str | _Slot] = []
    found: set[str] = set()
    quote, quote_start, literal_start, i = "", 0, 0, 0
    while i < len(text):
        char = text[i]
        if not quote and char == "#":  # a comment, to the end of the line: left as it is
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if not quote and char in _QUOTES:
            quote, quote_start = char, i
            i += 1
            continue
        if quote and char == "\\" and quote != "`":  # raw strings (`) have no escapes
            i += 2
            continue
        if quote and char == quote:
            quote = ""
            i += 1
            continue
        match = _PLACEHOLDER.match(text, i) if char == "{" else None
        if match is None:
            i += 1
            continue
        name = match.group(1)
        if name not in PLACEHOLDERS:
            raise refuse(
                f"{{{name}}} is not a placeholder; use {{feature}}, {{version}} and {{window}}"
            )
        if name != "window":
            if quote != '"':
                raise refuse(
                    f'put {{{name}}} inside a double-quoted label value, e.g. {name}="{{{name}}}"'
                )
            if text[:quote_start].rstrip().endswith(("=~", "!~")):
                raise refuse(
                    f"match {{{name}}} with = rather than a regex (=~ or !~): a version's "
                    "'.' and '+' are regex characters"
                )
        pieces += [text[literal_start:i], _Slot(name)]
        found.add(name)
        i = literal_start = match.end()
    if quote:
        raise refuse(f"the string opened with {quote} at character {quote_start + 1} never closes")
    pieces.append(text[literal_start:])
    missing = [f"{{{name}}}" for name in ("feature", "version") if name not in found]
    if missing:
        raise refuse(
            f"it needs {' and '.join(missing)} so each version is counted apart, e.g. "
            f"{EXAMPLE_LOADS_QUERY!r}"
        )
    return QueryTemplate(setting, text, tuple(p for p in pieces if p != ""))


def promql_string(value: str) -> str:
    """`value` escaped for the inside of a double-quoted PromQL string: backslash, the
    quote and control characters (as \\xHH); the rest as it is (PromQL strings are UTF-8)."""
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def window_of(since: datetime, now: datetime) -> str:
    """The PromQL duration from `since` to `now`, in whole seconds rounded up, at least 1s.

    Raises InvalidArgument for a time without a time zone, or `since` after `now`.
    """
    for name, value in (("since", since), ("now", now)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidArgument(f"{name} {value.isoformat()} has no time zone; pass UTC", name)
    seconds = (now - since).total_seconds()
    if seconds < 0:
        raise InvalidArgument(
            f"since {since.isoformat()} is after now {now.isoformat()}; the window cannot be "
            "negative",
            "since",
        )
    return f"{max(1, math.ceil(seconds))}s"


# --- settings ----------------------------------------------------------------------------------


def check_url(text: object, setting: str = "prometheus_url") -> str:
    """The server's base URL (http or https, maybe under a path prefix), without a trailing
    `/`; raises ConfigError naming `setting` for anything else, or for one with credentials."""
    fix = (
        "set it to the Prometheus server's http(s) URL, e.g. 'http://prometheus:9090' "
        "(a path prefix such as '/prometheus' is kept)"
    )
    value = text.strip() if isinstance(text, str) else ""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{setting} is {shown(text)}; {fix}.") from None
    if parts.username is not None or parts.password is not None:
        # Not echoed: the value holds what looks like a credential.
        raise ConfigError(
            f"{setting} carries a user name or password; put a bearer token in the file "
            "prometheus_bearer_token_path names instead, and remove them from the URL."
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{setting} is {shown(text)}; {fix}.")
    return value.rstrip("/")


def check_timeout(seconds: object, setting: str = "prometheus_timeout_seconds") -> float:
    """`seconds` if a number of seconds above 0 and at most MAX_TIMEOUT_SECONDS; raises
    ConfigError naming `setting`."""
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or not 0 < seconds <= MAX_TIMEOUT_SECONDS
    ):
        raise ConfigError(
            f"{setting} is {shown(seconds)}; set it to a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT_SECONDS:g}."
        )
    return float(seconds)


def check_token(token: str, setting: str = "prometheus_bearer_token_path") -> str:
    """`token` stripped, if usable in an Authorization header; raises ConfigError naming
    `setting`, never showing the token."""
    token = token.strip()
    if not _TOKEN.fullmatch(token):
        raise ConfigError(
            f"{setting} does not hold a usable bearer token; it must be 1 to 8192 printable "
            "ASCII characters without spaces (the token alone, no 'Bearer ')."
        )
    return token


class TokenFile:
    """A bearer token kept in a file, read again whenever the file changes (a rotated
    Kubernetes service account token, say). Call it for the token.

    Read once when made, so a missing, unreadable or empty file is refused at start;
    later, the same raises ConfigError at the query that needs the token. Never shows the
    token (`repr` names the path only).
    """

    def __init__(self, path: Path, setting: str = "prometheus_bearer_token_path") -> None:
        self.path = path
        self._setting = setting
        self._seen: tuple[int, int, int] | None = None
        self._token = ""
        self()

    def __call__(self) -> str:
        try:
            stat = os.stat(self.path)
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if key != self._seen:
                token = check_token(self.path.read_text(encoding="utf-8"), self._setting)
                self._token, self._seen = token, key
        except (OSError, UnicodeDecodeError) as error:
            why = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"{self._setting} is {str(self.path)!r}, which cannot be read ({why}); "
                "point it at the file holding the Prometheus bearer token."
            ) from None
        return self._token

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"


# --- the source --------------------------------------------------------------------------------


class _BadAnswer(Exception):
    """An answer that is not one count; `reason` completes "Prometheus at URL ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Series:
    labels: Mapping[str, str]
    value: int


class PrometheusSource:
    """Loads and failures of each version of a feature, from two PromQL queries.

    Make it once per process and `aclose()` it (or use `async with`) at shutdown: it keeps
    its connections between rounds.
    """

    def __init__(
        self,
        url: str,
        loads_query: str,
        failures_query: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        bearer_token: str | Callable[[], str] | None = None,
    ) -> None:
        """Raises ConfigError naming the setting for a bad URL (`prometheus_url`), query
        (`prometheus_loads_query`, `prometheus_failures_query`), timeout
        (`prometheus_timeout_seconds`) or token."""
        self.url = check_url(url)
        self.loads_query = parse_query(loads_query, "prometheus_loads_query")
        self.failures_query = parse_query(failures_query, "prometheus_failures_query")
        self.timeout_seconds = check_timeout(timeout)
        if isinstance(bearer_token, str):
            fixed = check_token(bearer_token)
            self._token: Callable[[], str] | None = lambda: fixed
        else:
            self._token = bearer_token
        self._endpoint = self.url + API_PATH
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_seconds), follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"PrometheusSource({self.url!r}, token={'set' if self._token else 'none'})"

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections kept open."""
        await self._client.aclose()

    async def counts(
        self, feature_id: str, versions: Iterable[str], since: datetime, now: datetime
    ) -> dict[str, Counts]:
        """What Prometheus counted of each of `versions` of `feature_id` from `since` to
        `now`, as the beacons count it (`batches` is 0: Prometheus has no batches).

        Every version asked for is in the answer (0 when nothing was counted). Raises
        InvalidArgument for a feature id or version that is not one (before any query is
        sent) and for `since` after `now`; Unavailable, naming the server, the setting and
        the query, when a count cannot be had (see the module docstring).
        """
        validate_feature_id(feature_id, "feature_id")
        wanted = [validate_version(v, "versions") for v in dict.fromkeys(versions)]
        window = window_of(since, now)
        asks = [
            self._ask(template, feature_id, version, window, now)
            for version in wanted
            for template in (self.loads_query, self.failures_query)
        ]
        answers = await asyncio.gather(*asks, return_exceptions=True)
        series: list[list[_Series]] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            series.append(answer)
        out: dict[str, Counts] = {}
        for index, version in enumerate(wanted):
            loads, failures = series[2 * index], series[2 * index + 1]
            counts = Counts(loads=loads[0].value if loads else 0)  # one series at most: _ask
            for kind, value in _by_kind(failures).items():
                setattr(counts, kind, value)
            out[version] = counts
        return out

    async def _ask(
        self, template: QueryTemplate, feature_id: str, version: str, window: str, at: datetime
    ) -> list[_Series]:
        """The series `template` answers for one version at `at`; the one place errors of
        the HTTP layer and bad answers become Unavailable."""
        query = template.render(feature_id, version, window)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                status, body = await self._get(query, at)
            series = _series(status, body)
            if template is self.failures_query:
                _by_kind(series)  # refused here, so the message names the query
            elif len(series) > 1:
                raise _BadAnswer(_several(series, "wrap the query in sum(...)"))
            return series
        except _BadAnswer as bad:
            reason = bad.reason
        except (TimeoutError, httpx.TimeoutException):
            reason = f"did not answer within {self.timeout_seconds:g} s"
        except httpx.HTTPError as error:
            reason = f"cannot be reached ({type(error).__name__}: {error or 'no detail'})"
        raise Unavailable(
            f"Prometheus at {self.url} {reason}; {template.setting} for {feature_id} "
            f"{version} was: {query}"
        )

    async def _get(self, query: str, at: datetime) -> tuple[int, bytes]:
        params = {
            "query": query,
            "time": f"{at.timestamp():.3f}",
            # Prometheus stops evaluating when we stop waiting.
            "timeout": f"{max(1, round(self.timeout_seconds * 1000))}ms",
        }
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token()}"
        async with self._client.stream(
            "GET", self._endpoint, params=params, headers=headers
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise _BadAnswer(
                        f"answered more than {MAX_ANSWER_BYTES:,} bytes, not one number; "
                        "wrap the query in sum(...)"
                    )
            return response.status_code, bytes(body)


def _series(status: int, body: bytes) -> list[_Series]:
    """The samples of a Prometheus answer, each value a whole count; raises _BadAnswer."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("status") == "error":
        raise _BadAnswer(
            f"refused the query (HTTP {status}, {_text(document.get('errorType'))}: "
            f"{_text(document.get('error'))})"
        )
    if not 200 <= status < 300:
        raise _BadAnswer(f"answered HTTP {status}: {_text(body.decode('utf-8', 'replace'))}")
    if not isinstance(document, dict) or document.get("status") != "success":
        raise _BadAnswer(
            "answered something other than a Prometheus API answer: "
            + _text(body.decode("utf-8", "replace"))
        )
    warnings = document.get("warnings")
    if warnings:
        log.debug("prometheus warnings=%r", warnings)
    data = document.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind == "scalar":
        return [_Series({}, _count(result))]
    if kind == "matrix":
        raise _BadAnswer(
            "answered a matrix (samples over a range), not one number; end the range with "
            "a function such as sum(increase(...[{window}]))"
        )
    if kind != "vector" or not isinstance(result, list):
        raise _BadAnswer(f"answered a {_text(kind)} result, not an instant vector or a scalar")
    out = []
    for item in result:
        if not isinstance(item, dict):
            raise _BadAnswer("answered a vector whose samples are not objects")
        labels = item.get("metric", {})
        if "histogram" in item and "value" not in item:
            raise _BadAnswer(
                "answered a native histogram, not a number; count with "
                "histogram_count(...) or a counter"
            )
        if not isinstance(labels, dict):
            raise _BadAnswer("answered a sample whose labels are not an object")
        out.append(_Series({str(k): str(v) for k, v in labels.items()}, _count(item.get("value"))))
    return out


def _count(sample: object) -> int:
    """A `[timestamp, "value"]` pair's value as a whole count; raises _BadAnswer."""
    if not isinstance(sample, list) or len(sample) != 2 or not isinstance(sample[1], str):
        raise _BadAnswer(f"answered a sample that is not [time, value]: {_text(sample)}")
    try:
        value = float(sample[1])
    except ValueError:
        raise _BadAnswer(f"answered {_text(sample[1])}, not a number") from None
    if not math.isfinite(value):
        raise _BadAnswer(f"answered {sample[1]}, not a count (no loads counted give 0, not NaN)")
    count = round(value)
    if count < 0:
        raise _BadAnswer(f"answered {sample[1]}, not a count (counts never go below 0)")
    return count


def _several(series: list[_Series], fix: str) -> str:
    shown_labels = ", ".join(
        "{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}" for s in series[:3]
    )
    more = f" and {len(series) - 3} more" if len(series) > 3 else ""
    return f"answered {len(series)} series ({shown_labels}{more}), not one number; {fix}"


def _by_kind(series: list[_Series]) -> dict[str, int]:
    """A failures answer by the beacons' kinds: one series without a `kind` label is
    load_failures; series split by `kind` go to theirs. Raises _BadAnswer otherwise."""
    if not series:
        return {}
    if len(series) == 1 and KIND_LABEL not in series[0].labels:
        return {"load_failures": series[0].value}
    out: dict[str, int] = {}
    for one in series:
        kind = one.labels.get(KIND_LABEL)
        if kind is None or kind in out:
            raise _BadAnswer(
                _several(series, "wrap the query in sum(...), or sum by (kind) (...) to split it")
            )
        if kind not in FAILURE_KINDS:
            raise _BadAnswer(
                f'answered a series with kind="{_text(kind)}"; a kind is one of '
                f"{', '.join(FAILURE_KINDS)} (rename with label_replace, or drop by (kind))"
            )
        out[kind] = one.value
    return out


def _text(value: object, limit: int = 200) -> str:
    """Something Prometheus sent, fit for one line of a message."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
