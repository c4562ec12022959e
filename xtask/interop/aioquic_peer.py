"""An independent HTTP/3 peer on the aioquic library, for quay's interop smoke test.

    aioquic_peer.py client URL --ca PEM
        GET URL over HTTP/3; the body must be the /bytes/N pattern (byte i = i % 256)
        of the length the URL names. Prints the SHA-256; exits 1 on any mismatch.

    aioquic_peer.py server --listen HOST:PORT --dir DIR
        Serves GET /bytes/N (byte i = i % 256) over HTTP/3 with a fresh self-signed
        certificate for localhost, written to DIR/cert.pem. Prints
        "listening on HOST:PORT" when ready.
"""

import argparse
import asyncio
import datetime
import hashlib
import os
import sys
from urllib.parse import urlparse

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated


def pattern(n):
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}
        self.responses = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            r = self.responses.setdefault(ev.stream_id, {"status": None, "body": bytearray()})
            if isinstance(ev, HeadersReceived):
                for k, v in ev.headers:
                    if k == b":status":
                        r["status"] = int(v)
            elif isinstance(ev, DataReceived):
                r["body"] += ev.data
            if getattr(ev, "stream_ended", False) and ev.stream_id in self.waiters:
                self.waiters.pop(ev.stream_id).set_result(r)

    async def get(self, authority, path):
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            sid,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        fut = asyncio.get_running_loop().create_future()
        self.waiters[sid] = fut
        self.transmit()
        return await fut


async def run_client(args):
    url = urlparse(args.url)
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.load_verify_locations(args.ca)
    config.server_name = url.hostname
    async with connect(url.hostname, url.port or 443, configuration=config, create_protocol=Client) as client:
        r = await asyncio.wait_for(client.get(url.netloc, url.path), 30)
    body = bytes(r["body"])
    digest = hashlib.sha256(body).hexdigest()
    print(f"status {r['status']}, {len(body)} bytes, sha256 {digest}")
    if r["status"] != 200:
        return 1
    if url.path.startswith("/bytes/"):
        n = int(url.path[len("/bytes/"):])
        if hashlib.sha256(pattern(n)).hexdigest() != digest:
            print("body differs from the /bytes/ pattern", file=sys.stderr)
            return 1
    return 0


class Server(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = None

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                path = dict(ev.headers).get(b":path", b"/").decode()
                if path.startswith("/bytes/") and path[len("/bytes/"):].isdigit():
                    status, body = b"200", pattern(int(path[len("/bytes/"):]))
                else:
                    status, body = b"404", b"not found\n"
                self.h3.send_headers(
                    ev.stream_id,
                    [(b":status", status), (b"content-length", str(len(body)).encode())],
                )
                self.h3.send_data(ev.stream_id, body, end_stream=True)
        self.transmit()


def self_signed(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


async def run_server(args):
    host, port = args.listen.rsplit(":", 1)
    cert, key = self_signed(args.dir)
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    server = await serve(host, int(port), configuration=config, create_protocol=Server)
    sock = server._transport.get_extra_info("sockname")
    print(f"listening on {sock[0]}:{sock[1]}", flush=True)
    await asyncio.Event().wait()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role", required=True)
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("--ca", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", default="127.0.0.1:0")
    s.add_argument("--dir", required=True)
    args = p.parse_args()
    if args.role == "client":
        sys.exit(asyncio.run(run_client(args)))
    asyncio.run(run_server(args))


if __name__ == "__main__":
    main()
