"""The CDN origin: path rules, atomic filesystem writes, and the HTTP server a CDN pulls from."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasecontrol_server.origin import Origin, filesystem, validate_origin_path
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.origin.http import OriginHttpServer

ARTIFACT_SHA = hashlib.sha256(b"console.log(1)").hexdigest()

VALID_PATHS = {
    "remote-index": "remote-index.json",
    "releases": "features/checkout/releases.json",
    "manifest": "features/checkout/1.2.0/manifest.json",
    "artifact": f"artifacts/{ARTIFACT_SHA}",
    "prerelease-version": "features/checkout/1.2.0-rc.1+build.5/manifest.json",
}

INVALID_PATHS = {
    "empty": ("", "empty"),
    "absolute": ("/etc/passwd", "absolute"),
    "backslash": ("features\\checkout", "backslash"),
    "double-slash": ("features//releases.json", "empty segment"),
    "trailing-slash": ("features/", "empty segment"),
    "dot-dot-first": ("../secret", "outside"),
    "dot-dot-inside": ("features/../../secret", "outside"),
    "dot-segment": ("./remote-index.json", "outside"),
    "nul-byte": ("remote-index.json\x00.txt", "control character"),
    "newline": ("remote-index.json\n", "control character"),
}


class TestValidateOriginPath:
    @pytest.mark.parametrize("path", VALID_PATHS.values(), ids=VALID_PATHS.keys())
    def test_accepts_relative_paths(self, path: str) -> None:
        """A relative /-separated path with no empty, . or .. segment is returned unchanged."""
        assert validate_origin_path(path) == path

    @pytest.mark.parametrize(("path", "reason"), INVALID_PATHS.values(), ids=INVALID_PATHS.keys())
    def test_refuses_unsafe_paths(self, path: str, reason: str) -> None:
        """An unsafe path raises ValueError whose message gives the reason."""
        with pytest.raises(ValueError, match=reason):
            validate_origin_path(path)


def all_files(root: Path) -> set[str]:
    """Every file under root, hidden ones included, relative and /-separated."""
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


class TestFilesystemOrigin:
    def test_is_an_origin(self, tmp_path: Path) -> None:
        """FilesystemOrigin satisfies the Origin protocol."""
        assert isinstance(FilesystemOrigin(tmp_path), Origin)

    def test_write_creates_folders_and_reads_back(self, tmp_path: Path) -> None:
        """A write creates missing folders; read and exists then see the file."""
        origin = FilesystemOrigin(tmp_path / "origin")

        origin.write("features/checkout/releases.json", b"{}")

        assert origin.read("features/checkout/releases.json") == b"{}"
        assert origin.exists("features/checkout/releases.json")
        assert (tmp_path / "origin/features/checkout/releases.json").read_bytes() == b"{}"

    def test_missing_files_and_folders_are_absent(self, tmp_path: Path) -> None:
        """read gives None and exists False for a missing file and for a folder."""
        origin = FilesystemOrigin(tmp_path)
        origin.write("features/checkout/releases.json", b"{}")

        assert origin.read("nope.json") is None
        assert origin.read("features/checkout") is None
        assert not origin.exists("nope.json")
        assert not origin.exists("features")

    def test_write_replaces_content_and_leaves_no_temp_files(self, tmp_path: Path) -> None:
        """A second write replaces the bytes and no temporary file stays behind."""
        origin = FilesystemOrigin(tmp_path)
        origin.write("remote-index.json", b"old")

        origin.write("remote-index.json", b"new")

        assert origin.read("remote-index.json") == b"new"
        assert all_files(tmp_path) == {"remote-index.json"}

    def test_files_are_world_readable(self, tmp_path: Path) -> None:
        """Written files have mode 0644 so a web server running as another user can serve them."""
        origin = FilesystemOrigin(tmp_path)
        old_umask = os.umask(0o077)
        try:
            origin.write("remote-index.json", b"{}")
        finally:
            os.umask(old_umask)

        assert (tmp_path / "remote-index.json").stat().st_mode & 0o777 == 0o644

    @pytest.mark.parametrize("failing", ["swap", "replace"])
    def test_failed_write_keeps_the_old_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
    ) -> None:
        """When the rename fails (the swap of names, or os.replace where there is no swap)
        the old bytes stay and the temporary file is removed."""
        origin = FilesystemOrigin(tmp_path)
        origin.write("remote-index.json", b"old")

        def refuse(src: object, dst: object) -> bool:
            raise OSError(28, "No space left on device")

        if failing == "swap":
            monkeypatch.setattr(filesystem, "_swap", refuse)
        else:
            monkeypatch.setattr(filesystem, "_swap", lambda temp, target: False)
            monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(OSError, match="No space"):
            origin.write("remote-index.json", b"new")

        assert origin.read("remote-index.json") == b"old"
        assert all_files(tmp_path) == {"remote-index.json"}

    def test_reader_never_sees_half_a_file(self, tmp_path: Path) -> None:
        """While one thread keeps replacing a file, another only ever reads a whole version."""
        origin = FilesystemOrigin(tmp_path)
        versions = [bytes([65 + index]) * 256 * 1024 for index in range(2)]
        origin.write("remote-index.json", versions[0])
        done = threading.Event()

        def writer() -> None:
            for index in range(60):
                origin.write("remote-index.json", versions[index % 2])
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        reads = 0
        while not done.is_set() or reads == 0:
            assert origin.read("remote-index.json") in versions
            reads += 1
        thread.join()

    @pytest.mark.parametrize("path", ["../escape", "/abs", "a//b"], ids=["dot-dot", "abs", "empty"])
    def test_unsafe_paths_are_refused(self, tmp_path: Path, path: str) -> None:
        """write, read and exists raise ValueError for an unsafe path and touch nothing."""
        origin = FilesystemOrigin(tmp_path / "origin")

        with pytest.raises(ValueError):
            origin.write(path, b"x")
        with pytest.raises(ValueError):
            origin.read(path)
        with pytest.raises(ValueError):
            origin.exists(path)
        assert all_files(tmp_path) == set()


INDEX = b'{"sequence": 7}'
ARTIFACT = b"console.log(1)"


class TestStaging:
    def test_stage_changes_nothing_until_publish(self, tmp_path: Path) -> None:
        origin = FilesystemOrigin(tmp_path)
        origin.write("features/a/releases.json", b"old")
        staged = origin.stage("features/a/releases.json", b"new")
        assert origin.read("features/a/releases.json") == b"old"
        assert staged.temp.parent == tmp_path / "features" / "a"
        assert staged.temp.name.startswith(".")  # hidden: never served
        origin.publish(staged)
        assert origin.read("features/a/releases.json") == b"new"
        assert all_files(tmp_path) == {"features/a/releases.json"}
        assert os.stat(tmp_path / "features/a/releases.json").st_mode & 0o777 == 0o644

    def test_publish_swaps_names_and_hands_back_the_old_file(self, tmp_path: Path) -> None:
        """Without sync, publish puts the new file in place and hands back the one it replaced,
        hidden beside it with its old bytes, for the caller to remove; a reader that opened
        the old file reads it whole."""
        if filesystem._renameat2 is None:
            pytest.skip("no renameat2 here: publish renames with os.replace")
        origin = FilesystemOrigin(tmp_path)
        origin.write("features/a/releases.json", b"old" * 1000)
        with (tmp_path / "features/a/releases.json").open("rb") as reader:
            displaced = origin.publish(origin.stage("features/a/releases.json", b"new"), sync=False)
            assert displaced is not None
            assert origin.read("features/a/releases.json") == b"new"
            assert displaced.parent == tmp_path / "features" / "a"
            assert displaced.name.startswith(".") and displaced.name.endswith(".tmp")
            assert displaced.read_bytes() == b"old" * 1000
            origin.remove_displaced(displaced)
            assert reader.read() == b"old" * 1000
        assert all_files(tmp_path) == {"features/a/releases.json"}
        assert origin.unchanged_since_written("features/a/releases.json")
        # A new path displaces nothing; with sync, nothing is handed back or left.
        assert origin.publish(origin.stage("features/b/releases.json", b"b"), sync=False) is None
        assert origin.publish(origin.stage("features/a/releases.json", b"newer")) is None
        assert all_files(tmp_path) == {"features/a/releases.json", "features/b/releases.json"}

    def test_a_folder_in_a_files_place_is_not_swapped_away(self, tmp_path: Path) -> None:
        """Publishing over a folder fails as a rename does, and the folder stays where it is."""
        origin = FilesystemOrigin(tmp_path)
        (tmp_path / "remote-index.json").mkdir()
        staged = origin.stage("remote-index.json", b"new")
        with pytest.raises(IsADirectoryError):
            origin.publish(staged, sync=False)
        assert (tmp_path / "remote-index.json").is_dir()
        assert not staged.temp.exists()

    def test_discard_leaves_the_old_file(self, tmp_path: Path) -> None:
        origin = FilesystemOrigin(tmp_path)
        origin.write("remote-index.json", b"old")
        origin.discard(origin.stage("remote-index.json", b"new"))
        assert origin.read("remote-index.json") == b"old"
        assert all_files(tmp_path) == {"remote-index.json"}

    def test_unchanged_since_written_notices_any_other_writer(self, tmp_path: Path) -> None:
        origin = FilesystemOrigin(tmp_path)
        assert not origin.unchanged_since_written("remote-index.json")  # never written
        origin.write("remote-index.json", b"ours")
        assert origin.unchanged_since_written("remote-index.json")
        # Another writer replaces it (a new inode), even with bytes of the same size.
        other = FilesystemOrigin(tmp_path)
        other.write("remote-index.json", b"them")
        assert not origin.unchanged_since_written("remote-index.json")
        origin.publish(origin.stage("remote-index.json", b"ours again"))
        assert origin.unchanged_since_written("remote-index.json")
        # An edit in place that changes the size.
        (tmp_path / "remote-index.json").write_bytes(b"edited in place")
        assert not origin.unchanged_since_written("remote-index.json")
        (tmp_path / "remote-index.json").unlink()
        assert not origin.unchanged_since_written("remote-index.json")


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


@pytest.fixture
def served(tmp_path: Path) -> Iterator[OriginHttpServer]:
    root = tmp_path / "origin"
    origin = FilesystemOrigin(root)
    origin.write("remote-index.json", INDEX)
    origin.write("features/checkout/releases.json", b"{}")
    origin.write(f"artifacts/{ARTIFACT_SHA}", ARTIFACT)
    origin.write("features/checkout/.releases.json.x1y2.tmp", b"half")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (root / "features/link.json").symlink_to(tmp_path / "secret.txt")
    (root / "features/alias.json").symlink_to(root / "features/checkout/.releases.json.x1y2.tmp")
    server = OriginHttpServer(root, port=0)
    server.start()
    yield server
    server.stop()


def request(
    server: OriginHttpServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    """Send `path` exactly as given (http.client does not normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


NOT_SERVED = {
    "root": "/",
    "folder": "/features",
    "folder-slash": "/features/",
    "missing": "/missing.json",
    "dot-dot": "/../secret.txt",
    "dot-dot-inside": "/features/../../secret.txt",
    "encoded-dot-dot": "/%2e%2e/secret.txt",
    "encoded-slash-dot-dot": "/features%2F..%2F..%2Fsecret.txt",
    "backslash": "/features\\..\\..\\secret.txt",
    "temp-file": "/features/checkout/.releases.json.x1y2.tmp",
    "symlink-outside": "/features/link.json",
    "symlink-to-a-temp-file": "/features/alias.json",
}


class TestOriginHttpServer:
    def test_url_names_the_bound_port(self, served: OriginHttpServer) -> None:
        """Started on port 0, the server reports the real port in port and url."""
        assert served.port != 0
        assert served.url == f"http://127.0.0.1:{served.port}/"

    def test_index_file_must_be_revalidated(self, served: OriginHttpServer) -> None:
        """A JSON index is served with its bytes, type, length, strong ETag and no-cache."""
        response, body = request(served, "/remote-index.json")

        assert response.status == 200
        assert body == INDEX
        assert response.getheader("Content-Type") == "application/json"
        assert response.getheader("Content-Length") == str(len(INDEX))
        assert response.getheader("ETag") == etag(INDEX)
        assert response.getheader("Cache-Control") == "no-cache"

    def test_artifact_is_immutable(self, served: OriginHttpServer) -> None:
        """A content-addressed artifact is cached for a year as immutable."""
        response, body = request(served, f"/artifacts/{ARTIFACT_SHA}")

        assert response.status == 200
        assert body == ARTIFACT
        assert response.getheader("Cache-Control") == "public, max-age=31536000, immutable"
        assert response.getheader("ETag") == etag(ARTIFACT)

    def test_head_sends_headers_without_body(self, served: OriginHttpServer) -> None:
        """HEAD answers with GET's headers, including Content-Length, and no body."""
        response, body = request(served, "/remote-index.json", method="HEAD")

        assert response.status == 200
        assert body == b""
        assert response.getheader("Content-Length") == str(len(INDEX))
        assert response.getheader("ETag") == etag(INDEX)

    @pytest.mark.parametrize(
        "if_none_match",
        [etag(INDEX), f"W/{etag(INDEX)}", f'"other", {etag(INDEX)}', "*"],
        ids=["exact", "weak", "in-list", "star"],
    )
    def test_matching_etag_gives_304(self, served: OriginHttpServer, if_none_match: str) -> None:
        """If-None-Match naming the current ETag answers 304 with no body."""
        response, body = request(
            served, "/remote-index.json", headers={"If-None-Match": if_none_match}
        )

        assert response.status == 304
        assert body == b""
        assert response.getheader("ETag") == etag(INDEX)
        assert response.getheader("Cache-Control") == "no-cache"

    def test_changed_file_is_sent_again(self, served: OriginHttpServer) -> None:
        """After the file changes, the old ETag no longer matches and the new bytes come back."""
        FilesystemOrigin(served.root).write("remote-index.json", b'{"sequence": 8}')

        response, body = request(
            served, "/remote-index.json", headers={"If-None-Match": etag(INDEX)}
        )

        assert response.status == 200
        assert body == b'{"sequence": 8}'

    @pytest.mark.parametrize("path", NOT_SERVED.values(), ids=NOT_SERVED.keys())
    def test_not_a_file_inside_the_root_is_404(self, served: OriginHttpServer, path: str) -> None:
        """Folders, missing files, traversal attempts, temp files and outside links answer 404."""
        response, body = request(served, path)

        assert response.status == 404
        assert b"secret" not in body

    def test_a_target_without_leading_slash_is_refused(self, served: OriginHttpServer) -> None:
        """A request target that is not an absolute path is no file: it is refused (400)."""
        response, body = request(served, "remote-index.json")

        assert response.status == 400
        assert b"sequence" not in body

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
    def test_only_get_and_head(self, served: OriginHttpServer, method: str) -> None:
        """Any other method answers 405 naming GET and HEAD."""
        response, _ = request(served, "/remote-index.json", method=method)

        assert response.status == 405
        assert response.getheader("Allow") == "GET, HEAD"

    def test_query_string_is_ignored(self, served: OriginHttpServer) -> None:
        """A cache-busting query string serves the same file."""
        response, body = request(served, "/remote-index.json?t=123")

        assert response.status == 200
        assert body == INDEX

    def test_requests_are_not_logged_to_stderr(
        self, served: OriginHttpServer, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """Serving requests writes nothing to stderr."""
        request(served, "/remote-index.json")
        request(served, "/missing.json")

        assert capfd.readouterr().err == ""

    def test_stop_closes_the_port(self, tmp_path: Path) -> None:
        """After stop the port refuses connections, and stopping again is harmless."""
        server = OriginHttpServer(tmp_path, port=0)
        server.start()
        port = server.port

        server.stop()
        server.stop()

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises(ConnectionRefusedError):
            conn.request("GET", "/")
        conn.close()
