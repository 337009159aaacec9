"""Files the gateway's own pages load, all served by the gateway itself (nothing from a CDN, so
the pages work offline): the favicon, and Swagger UI for ``/docs`` from the pinned
``swagger-ui-bundle-v2`` package. Each Swagger UI file is checked against the SHA-384 digest
pinned here when the app is built, and the page names the same digest as its ``integrity``, so
a browser refuses any other bytes. Upgrading the package means updating ``SWAGGER_UI``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import FromPath

from gateway.api.problems import Problem

ASSETS_PATH = "/docs/assets"
SWAGGER_UI: dict[str, tuple[str, str]] = {
    "swagger-ui.css": (
        "text/css; charset=utf-8",
        "sha384-KX9Rx9vM1AmUNAn07bPAiZhFD4C8jdNgG6f5MRNvR+EfAxs2PmMFtUUazui7ryZQ",
    ),
    "swagger-ui-bundle.js": (
        "text/javascript; charset=utf-8",
        "sha384-cxafBeQ+zYROeFafGFxtFbnp1ICqeS9mG7+f0WWSHzhnrUvwg9Za5CCw6wgrHA7K",
    ),
    "swagger-ui-standalone-preset.js": (
        "text/javascript; charset=utf-8",
        "sha384-6DNyIQAo3wcTAtOv9yarCKSm1Vhxwkg5ZHgsQ9Y4gD1NuzRgK4+HmCyRbEKkpJ66",
    ),
}
"""File → (content type, Subresource Integrity digest) of Swagger UI 5.31.0."""

FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    b'<rect width="32" height="32" rx="6" fill="#17702e"/>'
    b'<path d="M6 10h20v13H6z" fill="#fff"/><path d="M6 10l10 8 10-8" fill="none" '
    b'stroke="#17702e" stroke-width="2"/></svg>'
)
"""An envelope, as SVG (every current browser takes SVG at /favicon.ico)."""
FAVICON_LINK = '<link rel="icon" type="image/svg+xml" href="/favicon.ico">'
_IMMUTABLE = {"Cache-Control": "public, max-age=86400"}


def integrity(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def load_swagger_ui() -> dict[str, bytes]:
    """The pinned Swagger UI files, read once; refuses files that do not match their pin."""
    from swagger_ui_bundle import swagger_ui_path

    files: dict[str, bytes] = {}
    for name, (_, pinned) in SWAGGER_UI.items():
        data = Path(str(swagger_ui_path), name).read_bytes()
        if integrity(data) != pinned:
            raise RuntimeError(f"Swagger UI file {name} does not match its pinned digest")
        files[name] = data
    return files


class PackagedSwaggerUI(SwaggerRenderPlugin):
    """Swagger UI's page with its files from ``ASSETS_PATH``, each with its integrity."""

    def __init__(self, path: str = "/") -> None:
        super().__init__(path=path, favicon=FAVICON_LINK)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        def tag(name: str) -> str:
            url, digest = f"{ASSETS_PATH}/{name}", SWAGGER_UI[name][1]
            if name.endswith(".css"):
                return f'<link rel="stylesheet" href="{url}" integrity="{digest}">'
            return f'<script src="{url}" integrity="{digest}"></script>'

        title = json.dumps(openapi_schema["info"]["title"])[1:-1].replace("<", "&lt;")
        head = (
            f'<head><meta charset="utf-8"><title>{title}</title>{FAVICON_LINK}'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"{tag('swagger-ui.css')}{tag('swagger-ui-bundle.js')}"
            f"{tag('swagger-ui-standalone-preset.js')}{self.style}</head>"
        )
        spec = self.render_json(request, openapi_schema).replace(b"</", b"<\\/")
        body = (
            b"<body><div id='swagger-container'></div><script>"
            b"SwaggerUIBundle({spec: " + spec + b", dom_id: '#swagger-container', "
            b"deepLinking: true, presets: [SwaggerUIBundle.presets.apis, "
            b"SwaggerUIStandalonePreset]});</script></body>"
        )
        return b"<!DOCTYPE html><html lang='en'>" + head.encode() + body + b"</html>"


def asset_routes(swagger_ui: dict[str, bytes] | None) -> list[Any]:
    """``/favicon.ico`` always; Swagger UI's files when the docs are on (``swagger_ui``)."""

    @get("/favicon.ico", include_in_schema=False, cache_control=None)
    async def favicon() -> Response[bytes]:
        return Response(FAVICON, media_type="image/svg+xml", headers=_IMMUTABLE)

    @get(f"{ASSETS_PATH}/{{name:str}}", include_in_schema=False, cache_control=None)
    async def docs_asset(name: FromPath[str]) -> Response[bytes]:
        if swagger_ui is None or name not in swagger_ui:
            raise Problem(404, "not-found", "Not found", f"no asset {name!r}")
        return Response(swagger_ui[name], media_type=SWAGGER_UI[name][0], headers=_IMMUTABLE)

    return [favicon, docs_asset] if swagger_ui is not None else [favicon]
