"""The proxy a Python developer writes in an afternoon (case 4, the naive peer):
a bare ASGI app forwarding to ``$UPSTREAM`` with one shared httpx.AsyncClient,
streaming the response. Run under uvicorn."""

import os

import httpx

UPSTREAM = os.environ["UPSTREAM"]
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"te",
    b"upgrade",
    b"proxy-connection",
    b"host",
    b"trailer",
    b"proxy-authorization",
    b"proxy-authenticate",
}
client: httpx.AsyncClient | None = None


async def app(scope, receive, send):
    global client
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                client = httpx.AsyncClient(
                    base_url=UPSTREAM,
                    timeout=30,
                    limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
                )
            else:
                await client.aclose()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
    headers.append((b"x-forwarded-for", scope["client"][0].encode()))
    request = client.build_request(
        scope["method"],
        scope["raw_path"].decode("latin-1"),
        params=scope["query_string"],
        headers=headers,
        content=body,
    )
    response = await client.send(request, stream=True)
    try:
        out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await response.aclose()
