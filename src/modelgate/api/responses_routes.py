"""OpenAI Responses routes (stateless).  Thin: read the body, translate
(``wire/responses``), answer through the shared front-door path."""

from __future__ import annotations

from modelgate.api.middleware import Routes


def register(routes: Routes) -> None:
    return None
