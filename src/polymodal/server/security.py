"""The API key: checked on every route but /health, and declared in the OpenAPI document only when
the server enforces it (loopback without a key declares nothing)."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request

# Three ways to send the key; any one of them is enough (OpenAPI: a list of alternatives).
SCHEMES = {
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "APIKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key",
                    "description": "For links such as <img src>, which cannot send headers."},
    "HTTPBearer": {"type": "http", "scheme": "bearer"},
}


def key_checker(api_key: str):
    """A dependency that accepts `X-API-Key`, `Authorization: Bearer` or `?api_key=`, else 401."""
    expected = api_key.encode()

    async def check(request: Request) -> None:  # async: no thread-pool hop per request
        given = request.headers.get("x-api-key") or request.query_params.get("api_key") or _bearer(request)
        if not given or not secrets.compare_digest(given.encode(), expected):
            raise HTTPException(401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def declare(document: dict) -> dict:
    """Mark every operation that answers 401 as needing one of the key schemes."""
    document.setdefault("components", {})["securitySchemes"] = SCHEMES
    for operations in document["paths"].values():
        for operation in operations.values():
            if "401" in operation.get("responses", {}):
                operation["security"] = [{name: []} for name in SCHEMES]
    return document
