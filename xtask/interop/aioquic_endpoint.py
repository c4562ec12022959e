"""A QUIC Interop Runner endpoint on the aioquic library: both roles, hq-interop and h3.

Configured by the runner's environment: ROLE, TESTCASE, REQUESTS, SSLKEYLOGFILE, and
for local runs WWW, DOWNLOADS, CERTS and PORT (defaults /www, /downloads, /certs,
443). Exit 0: success; 1: failure; 127: unsupported test case.
"""

import asyncio
import os
import ssl
import sys
from urllib.parse import urlparse

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, StreamDataReceived, StreamReset
from aioquic.tls import CipherSuite

HQ = ["hq-interop"]

SERVER_CASES = {
    "handshake", "transfer", "longrtt", "chacha20", "multiplexing", "retry",
    "resumption", "zerortt", "http3", "blackhole", "keyupdate", "amplificationlimit",
    "handshakeloss", "transferloss", "handshakecorruption", "transfercorruption",
    "ipv6", "rebind-port", "rebind-addr", "goodput", "crosstraffic",
}
CLIENT_CASES = SERVER_CASES


def env(name, default=None):
    return os.environ.get(name, default)


def read_file(root, path):
    """The file under root for a request path, or None (nothing outside root)."""
    full = os.path.realpath(os.path.join(root, path.lstrip("/")))
    if not full.startswith(os.path.realpath(root) + os.sep) or not os.path.isfile(full):
        return None
    with open(full, "rb") as f:
        return f.read()


class Server(QuicConnectionProtocol):
    """Serves files from WWW over hq-interop or h3."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.www = env("WWW", "/www")
        self.h3 = None
        self.requests = {}

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self._quic)
        if self.h3 is not None:
            for ev in self.h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    path = dict(ev.headers).get(b":path", b"/").decode()
                    body = read_file(self.www, path)
                    status = b"200" if body is not None else b"404"
                    body = body if body is not None else b""
                    self.h3.send_headers(
                        ev.stream_id,
                        [(b":status", status), (b"content-length", str(len(body)).encode())],
                    )
                    self.h3.send_data(ev.stream_id, body, end_stream=True)
            self.transmit()
            return
        if isinstance(event, StreamDataReceived):
            buf = self.requests.setdefault(event.stream_id, bytearray())
            buf += event.data
            if event.end_stream or buf.endswith(b"\n"):
                line = bytes(buf).decode(errors="replace").strip()
                del self.requests[event.stream_id]
                body = None
                if line.startswith("GET /"):
                    body = read_file(self.www, line[4:])
                if body is None:
                    self._quic.reset_stream(event.stream_id, 4)
                else:
                    self._quic.send_stream_data(event.stream_id, body, end_stream=True)
                self.transmit()


class Client(QuicConnectionProtocol):
    """Fetches paths over hq-interop or h3; each result is (bytes or None, error)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = None
        self.waiters = {}
        self.bodies = {}

    def quic_event_received(self, event):
        if self.h3 is not None:
            for ev in self.h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    self.bodies.setdefault(ev.stream_id, bytearray())
                    status = dict(ev.headers).get(b":status")
                    if status != b"200":
                        self.finish(ev.stream_id, f"status {status}")
                elif isinstance(ev, DataReceived):
                    self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                if getattr(ev, "stream_ended", False):
                    self.finish(ev.stream_id, None)
        elif isinstance(event, StreamDataReceived):
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.finish(event.stream_id, None)
        if isinstance(event, StreamReset):
            self.finish(event.stream_id, f"reset {event.error_code}")

    def finish(self, stream_id, error):
        fut = self.waiters.pop(stream_id, None)
        if fut is not None and not fut.done():
            fut.set_result((bytes(self.bodies.pop(stream_id, b"")), error))

    async def get(self, url):
        sid = self._quic.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self.waiters[sid] = fut
        if self.h3 is not None:
            self.h3.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", url.netloc.encode()),
                    (b":path", url.path.encode()),
                ],
                end_stream=True,
            )
        else:
            self._quic.send_stream_data(sid, f"GET {url.path}\r\n".encode(), end_stream=True)
        self.transmit()
        return await fut


def configuration(is_client, case):
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=H3_ALPN if case == "http3" else HQ,
        idle_timeout=60.0,
    )
    log = env("SSLKEYLOGFILE")
    if log:
        config.secrets_log_file = open(log, "a")
    return config


async def run_server(case):
    certs = env("CERTS", "/certs")
    config = configuration(False, case)
    config.load_cert_chain(os.path.join(certs, "cert.pem"), os.path.join(certs, "priv.key"))
    tickets = {}
    host = "::" if case == "ipv6" else "0.0.0.0"
    port = int(env("PORT", "443"))
    await serve(
        host,
        port,
        configuration=config,
        create_protocol=Server,
        retry=case == "retry",
        session_ticket_fetcher=tickets.pop,
        session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t),
    )
    print(f"listening on {host}:{port}", flush=True)
    await asyncio.Future()


async def fetch(urls, case, ticket=None, early=False):
    """Fetches urls over one connection; returns the results and the last ticket."""
    first = urlparse(urls[0])
    config = configuration(True, case)
    config.verify_mode = ssl.CERT_NONE
    if case == "chacha20":
        config.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
    config.session_ticket = ticket
    tickets = []

    async with connect(
        first.hostname,
        first.port or 443,
        configuration=config,
        create_protocol=Client,
        session_ticket_handler=tickets.append,
        wait_connected=not early,
    ) as client:
        if case == "http3":
            client.h3 = H3Connection(client._quic)
        if case == "keyupdate":
            client._quic.request_key_update()
        results = await asyncio.gather(*(client.get(urlparse(u)) for u in urls))
        # Give the server's session ticket a moment when a second connection needs it.
        for _ in range(20):
            if tickets or case not in ("resumption", "zerortt"):
                break
            await asyncio.sleep(0.05)
    return list(zip(urls, results)), (tickets[-1] if tickets else None)


async def run_client(case):
    downloads = env("DOWNLOADS", "/downloads")
    urls = env("REQUESTS", "").split()
    if not urls:
        print("REQUESTS is empty", file=sys.stderr)
        return 1
    results = []
    if case in ("resumption", "zerortt"):
        got, ticket = await fetch(urls[:1], case)
        results += got
        if ticket is None:
            print("no session ticket", file=sys.stderr)
            return 1
        if urls[1:]:
            got, _ = await fetch(urls[1:], case, ticket, early=case == "zerortt")
            results += got
    elif case in ("handshakeloss", "handshakecorruption"):
        for u in urls:
            got, _ = await fetch([u], case)
            results += got
    else:
        got, _ = await fetch(urls, case)
        results += got
    failed = 0
    for url, (body, error) in results:
        name = urlparse(url).path.lstrip("/")
        if error or ".." in name.split("/") or not name:
            print(f"{url}: {error or 'bad path'}", file=sys.stderr)
            failed += 1
            continue
        path = os.path.join(downloads, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(body)
    return 1 if failed else 0


def main():
    role, case = env("ROLE"), env("TESTCASE", "")
    cases = SERVER_CASES if role == "server" else CLIENT_CASES
    if role not in ("server", "client"):
        print("ROLE must be client or server", file=sys.stderr)
        return 1
    if case not in cases:
        print(f"unsupported test case {case!r}", file=sys.stderr)
        return 127
    if role == "server":
        asyncio.run(run_server(case))
        return 0
    return asyncio.run(asyncio.wait_for(run_client(case), 280))


if __name__ == "__main__":
    sys.exit(main())
