"""The Prometheus source of the canary analysis against the real server (issue 14, item 2):
a real HTTP server in the test answers the Prometheus query API; a canary whose failures it
reports beyond the budget is rolled back by the server, with the figures in the reason."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import RunningServer, make_feature, start_server

from releasecontrol.manifest import load_feature_folder
from releasectl.launcher import LocalServerError

pytestmark = pytest.mark.integration

LOADS = (
    'sum(increase(frontend_feature_loads_total{feature="{feature}",version="{version}"}[{window}]))'
)
FAILURES = (
    'sum(increase(frontend_feature_failures_total{feature="{feature}",version="{version}"}'
    "[{window}]))"
)
COUNTS = {
    ("loads", "1.0.0"): 4000,
    ("failures", "1.0.0"): 8,
    ("loads", "1.1.0"): 4000,
    ("failures", "1.1.0"): 200,
}


class FakePrometheus:
    """`/api/v1/query` answering a vector with one sample per (metric, version) of COUNTS."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)["query"][0]
                fake.queries.append(query)
                kind = "failures" if "failures" in query else "loads"
                version = re.search(r'version="([^"]+)"', query)
                value = COUNTS.get((kind, version.group(1) if version else ""), 0)
                body = json.dumps(
                    {
                        "status": "success",
                        "data": {
                            "resultType": "vector",
                            "result": [{"metric": {}, "value": [time.time(), str(value)]}],
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def server(tmp_path: Path, prometheus: FakePrometheus) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path / "home",
        RELEASECONTROL_ANALYSIS_SOURCE="prometheus",
        RELEASECONTROL_PROMETHEUS_URL=prometheus.url,
        RELEASECONTROL_PROMETHEUS_LOADS_QUERY=LOADS,
        RELEASECONTROL_PROMETHEUS_FAILURES_QUERY=FAILURES,
        RELEASECONTROL_ANALYSIS_INTERVAL_SECONDS="0.2",
    )
    yield running
    running.stop()


def test_a_canary_worse_in_prometheus_is_rolled_back(
    server: RunningServer, prometheus: FakePrometheus, tmp_path: Path
) -> None:
    client = server.client()
    client.publish(load_feature_folder(make_feature(tmp_path / "a", "checkout", "1.0.0")))
    client.publish(load_feature_folder(make_feature(tmp_path / "b", "checkout", "1.1.0")))
    client.rollback("checkout", "1.0.0")
    client.deploy_canary("checkout", "1.1.0", soak_seconds=1800, weight=5000)
    deadline = time.monotonic() + 15
    while client.get_status().features[0].canary.version and time.monotonic() < deadline:
        time.sleep(0.1)
    last = client.list_transitions(feature_id="checkout").transitions[0]
    assert (last.actor, last.detail) == (
        "releasecontrol-analysis",
        "canary 1.1.0 rolled back; stable 1.0.0 stays",
    )
    assert last.reason.startswith("failure rate 5.0% vs 0.2% over 8,000 loads")
    sent = set(prometheus.queries)
    assert any(
        'feature="checkout",version="1.1.0"' in q and "frontend_feature_loads" in q for q in sent
    )


def test_prometheus_without_its_queries_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(LocalServerError, match="prometheus_loads_query, prometheus_failures_query"):
        start_server(
            tmp_path / "home",
            RELEASECONTROL_ANALYSIS_SOURCE="prometheus",
            RELEASECONTROL_PROMETHEUS_URL="http://127.0.0.1:9",
        )
