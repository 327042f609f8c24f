"""The Prometheus source of canary counts (prometheus.py): the queries it sends to a real HTTP
server answering as Prometheus's `/api/v1/query` does, the counts it returns, each way an
answer is refused, and the checks that keep a caller's values out of the PromQL."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from releasecontrol.errors import ConfigError, InvalidArgument, Unavailable
from releasecontrol_server.beacons import Counts
from releasecontrol_server.prometheus import (
    API_PATH,
    MAX_ANSWER_BYTES,
    PrometheusSource,
    TokenFile,
    parse_query,
    promql_string,
    window_of,
)

NOW = datetime(2026, 12, 7, 10, 30, 0, tzinfo=UTC)
SOAK_START = NOW - timedelta(minutes=30)
LOADS = (
    'sum(increase(frontend_feature_loads_total{feature="{feature}",version="{version}"}[{window}]))'
)
FAILURES = (
    'sum(increase(frontend_feature_failures_total{feature="{feature}",version="{version}"}'
    "[{window}]))"
)
TOKEN = "prom-token-0123456789abcdef"

Answer = tuple[int, bytes | dict[str, Any]]


def vector(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    """A Prometheus success answer holding an instant vector."""
    result = [{"metric": labels, "value": [NOW.timestamp(), value]} for labels, value in samples]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def number(value: str) -> dict[str, Any]:
    """A one-series vector, as `sum(...)` answers."""
    return vector(({}, value))


class FakePrometheus:
    """`/api/v1/query` on 127.0.0.1: records each request; `answer` decides what it says."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.answer: Callable[[str], Answer] = lambda query: (200, number("0"))
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                fake.requests.append((parts.path, params, dict(self.headers.items())))
                status, body = fake.answer(params.get("query", ""))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status in (301, 302):
                    self.send_header("Location", "/elsewhere")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that stopped reading (the over-long answer): expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def queries(self) -> list[str]:
        return [params["query"] for _, params, _ in self.requests]


@pytest.fixture(scope="module")
def running() -> Iterator[FakePrometheus]:
    # One server for the module: stopping one waits out serve_forever's poll (0.5 s).
    fake = FakePrometheus()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    fake.thread.join()


@pytest.fixture
def prometheus(running: FakePrometheus) -> Iterator[FakePrometheus]:
    running.requests = []
    running.answer = lambda query: (200, number("0"))
    running.release = threading.Event()
    yield running
    running.release.set()  # a handler kept waiting by a test ends


def by_query(**answers: Answer) -> Callable[[str], Answer]:
    """Answer by which metric the query names (`loads` or `failures`), zero otherwise."""

    def answer(query: str) -> Answer:
        for name, found in answers.items():
            if f"frontend_feature_{name}_total" in query:
                return found
        return 200, number("0")

    return answer


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestQueries:
    async def test_each_version_is_asked_with_its_values_in_place_at_now(
        self, prometheus: FakePrometheus
    ) -> None:
        """Both queries go out for each version with feature, version and window filled in, at
        `now`, with Prometheus's own timeout set to ours."""
        async with PrometheusSource(prometheus.url, LOADS, FAILURES, timeout=2.5) as source:
            await source.counts("checkout-v2", ["1.0.0", "1.1.0-rc.1+build.5"], SOAK_START, NOW)
        assert sorted(prometheus.queries) == sorted(
            [
                'sum(increase(frontend_feature_loads_total{feature="checkout-v2",'
                'version="1.0.0"}[1800s]))',
                'sum(increase(frontend_feature_failures_total{feature="checkout-v2",'
                'version="1.0.0"}[1800s]))',
                'sum(increase(frontend_feature_loads_total{feature="checkout-v2",'
                'version="1.1.0-rc.1+build.5"}[1800s]))',
                'sum(increase(frontend_feature_failures_total{feature="checkout-v2",'
                'version="1.1.0-rc.1+build.5"}[1800s]))',
            ]
        )
        for path, params, headers in prometheus.requests:
            assert path == API_PATH
            assert params["time"] == f"{NOW.timestamp():.3f}"
            assert params["timeout"] == "2500ms"
            assert "Authorization" not in headers

    async def test_a_path_prefix_in_the_url_is_kept(self, prometheus: FakePrometheus) -> None:
        """A Prometheus served under a prefix is asked under it."""
        url = prometheus.url + "/prometheus/"
        async with PrometheusSource(url, LOADS, FAILURES) as source:
            await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        assert {path for path, _, _ in prometheus.requests} == {"/prometheus" + API_PATH}

    @pytest.mark.parametrize(
        ("since", "window"),
        [
            pytest.param(NOW, "1s", id="no-time-yet-is-1s"),
            pytest.param(NOW - timedelta(seconds=90.2), "91s", id="rounded-up"),
            pytest.param(NOW - timedelta(days=2), "172800s", id="days-in-seconds"),
        ],
    )
    def test_the_window_is_whole_seconds_since_the_soak_began(
        self, since: datetime, window: str
    ) -> None:
        """The window covers the whole soak, rounded up to a second, and is never 0."""
        assert window_of(since, NOW) == window

    @pytest.mark.parametrize(
        ("since", "now", "field"),
        [
            pytest.param(NOW + timedelta(seconds=1), NOW, "since", id="since-after-now"),
            pytest.param(SOAK_START.replace(tzinfo=None), NOW, "since", id="naive-since"),
            pytest.param(SOAK_START, NOW.replace(tzinfo=None), "now", id="naive-now"),
        ],
    )
    async def test_a_window_that_is_no_window_is_refused_before_asking(
        self, prometheus: FakePrometheus, since: datetime, now: datetime, field: str
    ) -> None:
        """A soak start after now, or a time without a zone, is refused naming it."""
        async with PrometheusSource(prometheus.url, LOADS, FAILURES) as source:
            with pytest.raises(InvalidArgument) as caught:
                await source.counts("checkout", ["1.0.0"], since, now)
        assert caught.value.field == field
        assert prometheus.requests == []

    async def test_the_bearer_token_is_sent_when_configured(
        self, prometheus: FakePrometheus
    ) -> None:
        """Every query carries `Authorization: Bearer <token>` when a token is given."""
        async with PrometheusSource(prometheus.url, LOADS, FAILURES, bearer_token=TOKEN) as source:
            await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
            assert TOKEN not in repr(source)
        assert [h["Authorization"] for _, _, h in prometheus.requests] == [f"Bearer {TOKEN}"] * 2

    async def test_a_token_file_is_read_again_when_it_changes(
        self, prometheus: FakePrometheus, tmp_path: Path
    ) -> None:
        """A rotated token file is picked up by the next query, without a restart."""
        path = tmp_path / "token"
        path.write_text("first-token-abc\n")
        tokens = TokenFile(path)
        async with PrometheusSource(prometheus.url, LOADS, FAILURES, bearer_token=tokens) as source:
            await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
            path.write_text("second-token-longer\n")
            await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        assert [h["Authorization"] for _, _, h in prometheus.requests] == [
            "Bearer first-token-abc"
        ] * 2 + ["Bearer second-token-longer"] * 2
        assert "first" not in repr(tokens) and "second" not in repr(tokens)

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(None, id="missing"),
            pytest.param("", id="empty"),
            pytest.param("two words", id="space-inside"),
            pytest.param("Bearer\nsecret-token", id="newline-inside"),
        ],
    )
    def test_a_token_file_without_a_usable_token_is_refused_without_showing_it(
        self, tmp_path: Path, content: str | None
    ) -> None:
        """A missing file, or one not holding one header-safe token, is refused at start naming
        the setting; the file's content never appears in the message."""
        path = tmp_path / "token"
        if content is not None:
            path.write_text(content)
        with pytest.raises(ConfigError, match="prometheus_bearer_token_path") as caught:
            TokenFile(path)
        assert "secret" not in caught.value.message and "words" not in caught.value.message


class TestCounts:
    async def test_counts_come_back_rounded_in_the_beacons_shape(
        self, prometheus: FakePrometheus
    ) -> None:
        """increase()'s floats are rounded; failures without a kind are load failures; a
        version Prometheus has nothing for counts 0 (empty vector)."""

        def answer(query: str) -> Answer:
            if 'version="1.0.0"' in query:
                return 200, number("12400.4" if "loads" in query else "49.6")
            return 200, vector()

        prometheus.answer = answer
        async with PrometheusSource(prometheus.url, LOADS, FAILURES) as source:
            counts = await source.counts("checkout", ["1.0.0", "1.1.0"], SOAK_START, NOW)
        assert counts == {
            "1.0.0": Counts(loads=12400, load_failures=50),
            "1.1.0": Counts(),
        }

    async def test_failures_split_by_kind_go_to_their_kinds(
        self, prometheus: FakePrometheus
    ) -> None:
        """A failures query answering `sum by (kind)` fills each of the beacons' kinds."""
        prometheus.answer = by_query(
            loads=(200, number("5000")),
            failures=(
                200,
                vector(({"kind": "entry_errors"}, "7"), ({"kind": "refusals"}, "2.2")),
            ),
        )
        failures = FAILURES.replace("sum(", "sum by (kind) (")
        async with PrometheusSource(prometheus.url, LOADS, failures) as source:
            counts = await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        assert counts == {"1.0.0": Counts(loads=5000, entry_errors=7, refusals=2)}
        assert counts["1.0.0"].failures == 9

    async def test_a_scalar_answer_is_one_number(self, prometheus: FakePrometheus) -> None:
        """A scalar result (`scalar(...)`, a literal) counts like a one-series vector."""
        scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1, "42"]}}
        prometheus.answer = by_query(loads=(200, scalar))
        async with PrometheusSource(prometheus.url, LOADS, FAILURES) as source:
            counts = await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        assert counts == {"1.0.0": Counts(loads=42)}

    async def test_the_same_version_twice_is_asked_once(self, prometheus: FakePrometheus) -> None:
        """Versions are asked for once each, in the order given."""
        async with PrometheusSource(prometheus.url, LOADS, FAILURES) as source:
            counts = await source.counts("checkout", ["1.1.0", "1.0.0", "1.1.0"], SOAK_START, NOW)
        assert list(counts) == ["1.1.0", "1.0.0"]
        assert len(prometheus.requests) == 4


MATRIX = {
    "status": "success",
    "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "3"], [2, "4"]]}]},
}
STATUS_ERROR = {
    "status": "error",
    "errorType": "bad_data",
    "error": 'invalid parameter "query": 1:5: parse error: unexpected "}"',
}
HISTOGRAM = {
    "status": "success",
    "data": {
        "resultType": "vector",
        "result": [{"metric": {}, "histogram": [1, {"count": "3", "sum": "1"}]}],
    },
}
# Each row: what the loads query answers, and what the refusal must say.
BAD_ANSWERS = [
    pytest.param((500, b"internal failure"), "answered HTTP 500: internal failure", id="http-500"),
    pytest.param((503, b""), "answered HTTP 503", id="http-503-empty"),
    pytest.param((302, b""), "answered HTTP 302", id="redirect-not-followed"),
    pytest.param(
        (400, STATUS_ERROR),
        'refused the query (HTTP 400, bad_data: invalid parameter "query"',
        id="status-error-400",
    ),
    pytest.param(
        (200, {"status": "error", "errorType": "timeout", "error": "query timed out"}),
        "refused the query (HTTP 200, timeout: query timed out)",
        id="status-error-200",
    ),
    pytest.param((200, b"<html>login</html>"), "other than a Prometheus API", id="not-json"),
    pytest.param((200, number("NaN")), "answered NaN, not a count", id="nan"),
    pytest.param((200, number("+Inf")), "answered +Inf, not a count", id="plus-inf"),
    pytest.param((200, number("-Inf")), "answered -Inf, not a count", id="minus-inf"),
    pytest.param((200, number("-3")), "counts never go below 0", id="negative"),
    pytest.param((200, number("lots")), "answered lots, not a number", id="not-a-number"),
    pytest.param((200, MATRIX), "answered a matrix", id="matrix"),
    pytest.param(
        (200, {"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}),
        "answered a string result",
        id="string",
    ),
    pytest.param((200, HISTOGRAM), "answered a native histogram", id="native-histogram"),
    pytest.param(
        (200, vector(({"pod": "a"}, "1"), ({"pod": "b"}, "2"))),
        'answered 2 series ({pod="a"}, {pod="b"}), not one number; wrap the query in sum(...)',
        id="several-series",
    ),
    pytest.param(
        (200, b" " * (MAX_ANSWER_BYTES + 1)), "answered more than 1,048,576 bytes", id="too-big"
    ),
]


class TestErrors:
    @pytest.mark.parametrize(("answer", "reason"), BAD_ANSWERS)
    async def test_an_answer_that_is_not_one_count_is_refused_naming_server_and_query(
        self, prometheus: FakePrometheus, answer: Answer, reason: str
    ) -> None:
        """Unavailable, one sentence: the server, why, the setting, feature and version, and
        the query as sent."""
        prometheus.answer = by_query(loads=answer)
        async with PrometheusSource(prometheus.url, LOADS, FAILURES) as source:
            with pytest.raises(Unavailable) as caught:
                await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        message = caught.value.message
        assert message.startswith(f"Prometheus at {prometheus.url} ")
        assert reason in message
        query = (
            'sum(increase(frontend_feature_loads_total{feature="checkout",version="1.0.0"}[1800s]))'
        )
        assert message.endswith(f"; prometheus_loads_query for checkout 1.0.0 was: {query}")

    @pytest.mark.parametrize(
        ("failures", "reason"),
        [
            pytest.param(
                vector(({"kind": "entry_errors"}, "1"), ({"pod": "b"}, "2")),
                "answered 2 series",
                id="kind-on-some-only",
            ),
            pytest.param(
                vector(({"kind": "timeout"}, "1")),
                'answered a series with kind="timeout"; a kind is one of entry_errors,',
                id="unknown-kind",
            ),
            pytest.param(
                vector(({"kind": "refusals", "pod": "a"}, "1"), ({"kind": "refusals"}, "2")),
                "answered 2 series",
                id="kind-twice",
            ),
        ],
    )
    async def test_failures_split_other_than_by_kind_are_refused(
        self, prometheus: FakePrometheus, failures: dict[str, Any], reason: str
    ) -> None:
        """Several failure series are taken only when each is one of the beacons' kinds."""
        prometheus.answer = by_query(failures=(200, failures))
        async with PrometheusSource(prometheus.url, LOADS, FAILURES) as source:
            with pytest.raises(Unavailable, match="prometheus_failures_query") as caught:
                await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        assert reason in caught.value.message

    async def test_an_unreachable_server_is_named_with_the_query(self) -> None:
        """Nothing listening: Unavailable naming the URL and the query."""
        url = f"http://127.0.0.1:{closed_port()}"
        async with PrometheusSource(url, LOADS, FAILURES) as source:
            with pytest.raises(Unavailable) as caught:
                await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        message = caught.value.message
        assert message.startswith(f"Prometheus at {url} cannot be reached (ConnectError")
        assert "frontend_feature_" in message and 'version="1.0.0"' in message

    async def test_a_server_slower_than_the_timeout_is_given_up_on(
        self, prometheus: FakePrometheus
    ) -> None:
        """A query not answered within `timeout` is Unavailable saying so."""

        def hang(query: str) -> Answer:
            prometheus.release.wait(timeout=10)
            return 200, number("0")

        prometheus.answer = hang
        async with PrometheusSource(prometheus.url, LOADS, FAILURES, timeout=0.2) as source:
            with pytest.raises(Unavailable, match=r"did not answer within 0\.2 s"):
                await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)

    async def test_the_token_never_appears_in_an_error(self, prometheus: FakePrometheus) -> None:
        """A refused query names the server and the query, never the bearer token."""
        prometheus.answer = lambda query: (401, b"unauthorized")
        async with PrometheusSource(prometheus.url, LOADS, FAILURES, bearer_token=TOKEN) as source:
            with pytest.raises(Unavailable, match="answered HTTP 401") as caught:
                await source.counts("checkout", ["1.0.0"], SOAK_START, NOW)
        assert TOKEN not in caught.value.message


# A caller's values that would change the query if they reached it: each is refused as a
# feature id or a version before anything is sent.
INJECTIONS = [
    pytest.param('checkout"} or vector(1) #', "1.0.0", "feature_id", id="feature-closes-quote"),
    pytest.param("checkout\\", "1.0.0", "feature_id", id="feature-backslash"),
    pytest.param("Checkout", "1.0.0", "feature_id", id="feature-uppercase"),
    pytest.param("checkout", '1.0.0"}[1y]) or vector(1e9', "versions", id="version-closes-quote"),
    pytest.param("checkout", "1.0.0\n", "versions", id="version-newline"),
    pytest.param("checkout", ".*", "versions", id="version-regex"),
    pytest.param("checkout", "v1.0.0", "versions", id="version-not-semver"),
]


class TestInjection:
    @pytest.mark.parametrize(("feature", "version", "field"), INJECTIONS)
    async def test_a_value_that_is_not_a_feature_id_or_version_is_never_sent(
        self, prometheus: FakePrometheus, feature: str, version: str, field: str
    ) -> None:
        """InvalidArgument naming the field, and no query leaves."""
        async with PrometheusSource(prometheus.url, LOADS, FAILURES) as source:
            with pytest.raises(InvalidArgument) as caught:
                await source.counts(feature, ["1.0.0", version], SOAK_START, NOW)
        assert caught.value.field == field
        assert prometheus.requests == []

    @pytest.mark.parametrize(
        ("value", "escaped"),
        [
            pytest.param("1.0.0-rc.1+b.5", "1.0.0-rc.1+b.5", id="semver-unchanged"),
            pytest.param('a"b', 'a\\"b', id="quote"),
            pytest.param("a\\b", "a\\\\b", id="backslash"),
            pytest.param("a\nb\x7f", "a\\x0ab\\x7f", id="control"),
            pytest.param("é", "é", id="utf-8-kept"),
        ],
    )
    def test_label_values_are_escaped_for_a_double_quoted_string(
        self, value: str, escaped: str
    ) -> None:
        """Escaping is the second guard: a quote, a backslash or a control character cannot
        end the string even if one got past the checks."""
        assert promql_string(value) == escaped

    def test_the_template_fills_only_its_placeholders(self) -> None:
        """Label matcher braces stay; each placeholder is replaced, escaped, where it stands."""
        template = parse_query(
            'sum(x{job="web",feature="{feature}",version="{version}"}[{window}]) # per {feature}\n',
            "prometheus_loads_query",
        )
        assert template.render("checkout", 'a"', "60s") == (
            'sum(x{job="web",feature="checkout",version="a\\""}[60s]) # per {feature}\n'
        )


# Each row: a template, and what the refusal must say. The setting is always named.
BAD_TEMPLATES = [
    pytest.param("", "set it to a PromQL query", id="empty"),
    pytest.param(
        'sum(x{feature="{feature}"}[{window}])', "it needs {version}", id="without-version"
    ),
    pytest.param('sum(x{version="{version}"})', "it needs {feature}", id="without-feature"),
    pytest.param(
        'sum(x{feature="{feature}",version="{version}",job="{job}"})',
        "{job} is not a placeholder",
        id="unknown-placeholder",
    ),
    pytest.param(
        'sum(x{feature="{Feature}",version="{version}"})',
        "{Feature} is not a placeholder",
        id="placeholder-wrong-case",
    ),
    pytest.param(
        'sum(x{feature={feature},version="{version}"})',
        'put {feature} inside a double-quoted label value, e.g. feature="{feature}"',
        id="feature-unquoted",
    ),
    pytest.param(
        "sum(x{feature='{feature}',version=\"{version}\"})",
        "put {feature} inside a double-quoted",
        id="feature-single-quoted",
    ),
    pytest.param(
        'sum(x{feature="{feature}",version=`{version}`})',
        "put {version} inside a double-quoted",
        id="version-raw-string",
    ),
    pytest.param(
        'sum(x{feature="{feature}",version=~"{version}"})',
        "match {version} with = rather than a regex",
        id="version-regex-match",
    ),
    pytest.param(
        'sum(x{feature!~ "{feature}",version="{version}"})',
        "match {feature} with = rather than a regex",
        id="feature-negative-regex",
    ),
    pytest.param(
        'sum(x{feature="{feature}",version="{version}})',
        'the string opened with " at character',
        id="string-never-closed",
    ),
    pytest.param(
        'sum(x{feature="{feature}"}) # version="{version}"',
        "it needs {version}",
        id="placeholder-only-in-a-comment",
    ),
]


class TestTemplates:
    @pytest.mark.parametrize(("template", "reason"), BAD_TEMPLATES)
    def test_a_bad_template_is_refused_naming_the_setting(self, template: str, reason: str) -> None:
        """ConfigError naming the setting it came from and the fix."""
        with pytest.raises(ConfigError) as caught:
            parse_query(template, "prometheus_failures_query")
        assert caught.value.message.startswith("prometheus_failures_query is ")
        assert reason in caught.value.message

    def test_the_source_checks_both_templates_when_made(self) -> None:
        """A bad template is refused when the source is made, naming its setting."""
        with pytest.raises(ConfigError, match=r"^prometheus_loads_query is "):
            PrometheusSource("http://prometheus:9090", "sum(x)", FAILURES)
        with pytest.raises(ConfigError, match=r"^prometheus_failures_query is "):
            PrometheusSource("http://prometheus:9090", LOADS, 'x{version="{version}"}')

    def test_an_escaped_quote_does_not_end_the_string(self) -> None:
        """`\\"` inside a string keeps it open, so a placeholder after it is still inside."""
        template = parse_query(
            'sum(x{note="say \\"hi\\" {feature}",version="{version}"})', "prometheus_loads_query"
        )
        assert template.render("checkout", "1.0.0", "1s") == (
            'sum(x{note="say \\"hi\\" checkout",version="1.0.0"})'
        )


class TestSettings:
    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            pytest.param("ftp://prometheus:9090", "http(s) URL", id="not-http"),
            pytest.param("prometheus:9090", "http(s) URL", id="no-scheme"),
            pytest.param("http://prometheus:9090/?x=1", "http(s) URL", id="query"),
            pytest.param("http://prometheus:99999", "http(s) URL", id="bad-port"),
            pytest.param("http://user:pw@prometheus:9090", "user name or password", id="creds"),
        ],
    )
    def test_a_bad_url_is_refused_naming_the_setting(self, url: str, reason: str) -> None:
        """prometheus_url must be an http(s) URL without credentials (they are not echoed)."""
        with pytest.raises(ConfigError, match=r"^prometheus_url ") as caught:
            PrometheusSource(url, LOADS, FAILURES)
        assert reason in caught.value.message
        assert "pw" not in caught.value.message

    @pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 121, True])
    def test_a_bad_timeout_is_refused_naming_the_setting(self, timeout: float) -> None:
        """The timeout is a number of seconds above 0 and at most 120."""
        with pytest.raises(ConfigError, match=r"^prometheus_timeout_seconds is "):
            PrometheusSource("http://prometheus:9090", LOADS, FAILURES, timeout=timeout)

    def test_a_bad_inline_token_is_refused_without_showing_it(self) -> None:
        """A token that cannot go in a header is refused at start, not echoed."""
        with pytest.raises(ConfigError, match="usable bearer token") as caught:
            PrometheusSource(
                "http://prometheus:9090", LOADS, FAILURES, bearer_token="has a\nsecret"
            )
        assert "secret" not in caught.value.message
