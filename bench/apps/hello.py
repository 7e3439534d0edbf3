"""A plain ASGI app answering every request itself with the upstream's small
JSON body: the server's own ceiling (case 3), run by hypercorn's trio worker."""

BODY = b'{"id":42,"name":"bascule","tags":["gateway","bench"],"ok":true,"items":[1,2,3],"next":null}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
