"""Import maps with Subresource Integrity for what a host verified (docs/host-protocol.md, 8).

A page that inlines an import map at build or deploy time gets the browser to
refuse any module whose bytes differ from the signed manifest, whatever the CDN
serves later:

    {"imports":   {"checkout": "https://cdn.example.com/artifacts/<sha256>.js"},
     "scopes":    {"https://cdn.example.com/artifacts/<sha256>.js":
                     {"https://cdn.example.com/artifacts/chunk.js": ".../artifacts/<sha256'>.js"}},
     "integrity": {"https://cdn.example.com/artifacts/<sha256>.js": "sha256-<base64>"}}

`imports` maps each feature id to its entry asset's URL. Assets live at
content-addressed URLs, so `./chunk.js` in the entry would resolve to
`artifacts/chunk.js`: `scopes` gives each JavaScript asset a scope mapping the
URL each of its relative imports of another asset resolves to onto that
asset's URL (none where two assets would resolve to one URL). `integrity` lists
every JavaScript asset (`.js`, `.mjs`) of every feature. The JavaScript host's
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
    scopes: dict[str, dict[str, str]] = {}
    integrity: dict[str, str] = {}
    for feature_id in sorted(manifests):
        manifest = manifests[feature_id]
        urls = {
            a["path"]: urljoin(index_url, artifact_path(a["sha256"], a["path"]))
            for a in manifest["assets"]
        }
        for asset in manifest["assets"]:
            url = urls[asset["path"]]
            if asset["path"] == manifest["entry"]:
                imports[feature_id] = url
            if _is_script(asset["path"]):
                integrity[url] = integrity_of(asset["sha256"])
                scope = _scope(asset["path"], urls)
                if scope:
                    scopes[url] = scope
    return {
        "imports": imports,
        "scopes": dict(sorted(scopes.items())),
        "integrity": dict(sorted(integrity.items())),
    }


def _is_script(path: str) -> bool:
    return path.lower().endswith(SCRIPT_EXTENSIONS)


def _relative(source: str, target: str) -> str:
    """The relative specifier the asset at manifest path `source` uses for `target`."""
    folder = source.split("/")[:-1]
    parts = target.split("/")
    i = 0
    while i < len(folder) and i < len(parts) - 1 and folder[i] == parts[i]:
        i += 1
    up = len(folder) - i
    return ("../" * up if up else "./") + "/".join(parts[i:])


def _scope(source: str, urls: Mapping[str, str]) -> dict[str, str]:
    """URL a relative import from `source` resolves to -> the asset it means; keys two assets
    would share (paths climbing above the artifacts folder) are left out."""
    found: dict[str, str] = {}
    ambiguous: set[str] = set()
    for target, url in urls.items():
        if target == source:
            continue
        key = urljoin(urls[source], _relative(source, target))
        if key == url:
            continue
        if key in found and found[key] != url:
            ambiguous.add(key)
        found[key] = url
    return {k: v for k, v in sorted(found.items()) if k not in ambiguous}
