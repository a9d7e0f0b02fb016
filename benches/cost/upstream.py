#!/usr/bin/env python3
"""The cost guard's upstream: answers every request on 127.0.0.1:PORT (default 18080)
with the same small response nginx gives in ../shared/bench (200, five headers, a 20-byte
body), on keep-alive connections. Python's standard library only, so the guard needs no
nginx. Requests must have no body (the guard sends GETs).

usage: upstream.py [PORT]
"""
import asyncio
import email.utils
import sys
import time

BODY = b"hello from upstream\n"
_date = [0, b""]


def response():
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = email.utils.formatdate(now, usegmt=True).encode()
    return (b"HTTP/1.1 200 OK\r\nServer: cost-upstream\r\nDate: " + _date[1]
            + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: 20\r\n"
            + b"Connection: keep-alive\r\n\r\n" + BODY)


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            self.buf = self.buf[end + 4:]
            out.append(response())
        if out:
            self.transport.write(b"".join(out))
        if len(self.buf) > 65536:
            self.transport.close()


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18080
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
