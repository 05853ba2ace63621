"""Access token: off loopback every request must carry it.

The token is accepted as ``Authorization: Bearer T``, an ``X-EndoFed-Token: T`` header,
``?token=T`` in the URL (which then sets an HttpOnly, SameSite=Strict cookie so the
page's own requests carry it) or that cookie. Compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

COOKIE = "endofed_dashboard_token"
HEADER = "x-endofed-token"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only exposes the app to this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def presented_token(request: Request) -> tuple[str | None, bool]:
    """``(token, from_query)``: what the request carries, and whether it came in the URL."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if HEADER in request.headers:
        return request.headers[HEADER], False
    if "token" in request.query_params:
        return request.query_params["token"], True
    return request.cookies.get(COOKIE), False


def token_middleware(token: str) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                                             Awaitable[Response]]:
    """An HTTP middleware answering 401 to any request without ``token``."""
    expected = token.encode()

    async def check(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        given, from_query = presented_token(request)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            return PlainTextResponse(
                "401: this dashboard needs its access token (open the URL printed when it "
                "started, or send 'Authorization: Bearer TOKEN')", status_code=401)
        response = await call_next(request)
        if from_query:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    return check
