"""Import maps with Subresource Integrity for what a host verified (docs/host-protocol.md, 8).

A page that inlines an import map at build or deploy time gets the browser to
refuse any module whose bytes differ from the signed manifest, whatever the CDN
serves later:

    {"imports":   {"checkout": "https://cdn.example.com/artifacts/<sha256>.js"},
     "integrity": {"https://cdn.example.com/artifacts/<sha256>.js": "sha256-<base64>"}}

`imports` maps each feature id to its entry asset's URL; `integrity` lists every
JavaScript asset (`.js`, `.mjs`) of every feature. The JavaScript host's
`importMap()` and `releasecontrol-host importmap` give the same map.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

from releasecontrol.manifest import artifact_path

__all__ = ["SCRIPT_EXTENSIONS", "build_import_map", "integrity_of"]

SCRIPT_EXTENSIONS = (".js", ".mjs")


def integrity_of(sha256_hex: str) -> str:
    """The SRI value of a SHA-256 given in hex: "sha256-" and the standard base64 of it."""
    return "sha256-" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def build_import_map(index_url: str, manifests: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The import map of `manifests` (feature id -> verified manifest) served below the folder
    of `index_url`: each feature's entry, and the integrity of every script asset."""
    imports: dict[str, str] = {}
    integrity: dict[str, str] = {}
    for feature_id in sorted(manifests):
        manifest = manifests[feature_id]
        for asset in manifest["assets"]:
            url = urljoin(index_url, artifact_path(asset["sha256"], asset["path"]))
            if asset["path"] == manifest["entry"]:
                imports[feature_id] = url
            if asset["path"].lower().endswith(SCRIPT_EXTENSIONS):
                integrity[url] = integrity_of(asset["sha256"])
    return {"imports": imports, "integrity": dict(sorted(integrity.items()))}
