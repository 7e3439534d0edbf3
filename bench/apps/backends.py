"""Small asyncio HTTP/1.1 servers for the cases nginx cannot serve (stdlib only).

    python backends.py delay MS PORT [MS PORT ...]   answer each request after MS milliseconds
    python backends.py stream BYTES PORT             answer with BYTES bytes of chunked body,
                                                     produced by a generator (unknown length)

Keep-alive; GET/HEAD without a request body only. Runs until killed.
"""

import asyncio
import json
import sys

CHUNK = 64 * 1024


class Server(asyncio.Protocol):
    def __init__(self, answer):
        self.answer = answer
        self.buffer = b""
        self.queue: asyncio.Queue = asyncio.Queue()
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    def connection_made(self, transport):
        self.transport = transport
        self.task = asyncio.ensure_future(self.serve())

    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.queue.put_nowait(head)

    def connection_lost(self, exc):
        self.task.cancel()

    async def serve(self):
        while True:
            head = await self.queue.get()
            await self.answer(self, head.split(b" ", 2)[1])


def delayed(ms: int):
    body = json.dumps({"delay_ms": ms, "ok": True}).encode()
    response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def answer(server, path):
        await asyncio.sleep(ms / 1000)
        server.transport.write(response)

    return answer


def streamed(size: int):
    block = b"x" * CHUNK

    def chunks():
        left = size
        while left > 0:
            n = min(left, CHUNK)
            left -= n
            yield block[:n]

    async def answer(server, path):
        server.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for chunk in chunks():
            server.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await server.writable.wait()  # flow control: paused while the peer is slow
        server.transport.write(b"0\r\n\r\n")

    return answer


async def main(argv):
    mode, args = argv[0], argv[1:]
    loop = asyncio.get_running_loop()
    servers = []
    for value, port in zip(args[::2], args[1::2], strict=True):
        answer = delayed(int(value)) if mode == "delay" else streamed(int(value))
        servers.append(await loop.create_server(lambda a=answer: Server(a), "127.0.0.1", int(port)))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
