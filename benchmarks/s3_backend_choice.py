"""Which aiobotocore HTTP backend should s3pyfs (pyfuse3 + trio) use?

A  httpx backend (AioConfig(http_session_cls=HttpxSession), httpx2) natively
   on trio; A+ is A with httpcore2 reading 1 MiB per recv instead of 64 KiB.
B  default aiohttp backend on an asyncio loop in its own thread; every call is
   sent from trio through `Bridge`, so all B numbers include the bridge.
Measured --reps times each (order rotates; median, min-max, ratio to B):
multipart upload of --size-mib MiB (8 MiB parts, 8 in flight), download by
8 MiB ranged GETs (8 in flight, bodies read into bytes), 500 sequential HEADs
(median/p99 latency) and 500 HEADs 16 in flight, each with process CPU
(user+sys, all threads) per GiB or per op.  Then: bridge round-trip cost of
three bridge designs, A with a plain bytes Body, trio cancellation of a call
stalled before the headers / mid-body (is the client still usable after?),
and how connect/read timeouts + standard retries bound a call to a dead port
or to a stalling server (a trio proxy in front of S3 swallows "stall" keys).
Clients use payload_signing_enabled=False and checksums 'when_required': the
numbers are about transport, not SHA256/CRC32 (same cost in A and B).
Without --endpoint a private SeaweedFS (`weed` on PATH or beside python) runs
on free loopback ports for the duration.
"""
import argparse
import asyncio
import glob
import io
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import aiobotocore.session
import trio
from aiobotocore.config import AioConfig
from aiobotocore.httpxsession import HttpxSession
from httpcore2._async.http11 import AsyncHTTP11Connection as H11

# PITFALL 2 (A): httpcore2 recv()s 64 KiB at a time, ~2x B's CPU per GiB downloaded
MiB, PART, BUCKET, H11_READ = 1 << 20, 8 << 20, "s3bench", H11.READ_NUM_BYTES
METRICS = ("upload MiB/s", "upload CPU s/GiB", "download MiB/s", "download CPU s/GiB",
           "HEAD seq median ms", "HEAD seq p99 ms", "HEAD seq CPU us/op", "HEAD x16 ops/s",
           "HEAD x16 CPU us/op")


class ChunkedBody(io.BytesIO):
    """PITFALL 1 (A): botocore turns a bytes Body into BytesIO and aiobotocore's
    HttpxSession sends it with `for item in body`, i.e. *line by line* (~256 B
    pieces of random data, a checkpoint after each).  1 MiB reads fix it;
    seek/tell still give Content-Length and rewind on retry."""
    def __iter__(self):
        return iter(lambda: self.read(MiB), b"")


def cpu():
    return sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + sys, all threads


def make_client(endpoint, httpx, **kw):
    # PITFALL 3: retries "max_attempts" counts *retries* (3 -> 4 tries);
    # "total_max_attempts" counts tries.
    kw.setdefault("retries", {"mode": "standard", "total_max_attempts": 3})
    if httpx:
        kw["http_session_cls"] = HttpxSession
    return aiobotocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
        aws_secret_access_key="s", config=AioConfig(
            max_pool_connections=32, request_checksum_calculation="when_required",
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            response_checksum_validation="when_required", **kw))


class Bridge:
    """asyncio loop in a thread; `await bridge(coro)` from trio."""
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def __call__(self, coro):
        token, done, box = trio.lowlevel.current_trio_token(), trio.Event(), []
        def start():  # runs on the asyncio thread
            box.append(self.loop.create_task(coro))
            box[0].add_done_callback(lambda _: token.run_sync_soon(done.set))
        self.loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except trio.Cancelled:  # forward, and wait until asyncio has unwound
            self.loop.call_soon_threadsafe(lambda: box[0].cancel())
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return box[0].result()

    async def rct_token(self, coro):  # run_coroutine_threadsafe + token callback
        fut, token, done = (asyncio.run_coroutine_threadsafe(coro, self.loop),
                            trio.lowlevel.current_trio_token(), trio.Event())
        fut.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
        return fut.result()

    async def rct_thread(self, coro):  # run_coroutine_threadsafe + worker thread
        return await trio.to_thread.run_sync(
            asyncio.run_coroutine_threadsafe(coro, self.loop).result)


class Backend:
    """Runs `fn(client, *args)` from trio: directly (A, A+) or via the bridge (B)."""
    def __init__(self, name, endpoint, bridge=None, h11_read=H11_READ, **kw):
        self.name, self.bridge, self.h11_read = name, bridge, h11_read
        self.cm = make_client(endpoint, bridge is None, **kw)
        self.body = ChunkedBody if bridge is None else bytes

    async def _on(self, coro):
        return await (self.bridge(coro) if self.bridge else coro)

    async def __aenter__(self):
        self.client = await self._on(self.cm.__aenter__())
        return self

    async def __aexit__(self, *exc):
        await self._on(self.cm.__aexit__(None, None, None))

    async def run(self, fn, *args, **kw):
        return await self._on(fn(self.client, *args, **kw))


# S3 operations; they run on whichever event loop owns the client
async def call(c, method, **kw):
    return await getattr(c, method)(Bucket=BUCKET, **kw)

async def upload_part(c, key, uid, n, body):
    return (await call(c, "upload_part", Key=key, UploadId=uid, PartNumber=n, Body=body))["ETag"]

async def head(c, key, *_):
    return (await call(c, "head_object", Key=key))["ContentLength"]

async def get_len(c, key, off):
    return len(await get_range(c, key, off))

async def get_range(c, key, off=0, size=PART):
    r = await call(c, "get_object", Key=key, Range=f"bytes={off}-{off + size - 1}")
    async with r["Body"] as b:
        return await b.read()


async def fan_out(be, fn, arglist, width):
    out, lim = [None] * len(arglist), trio.CapacityLimiter(width)
    async def one(i, args):
        async with lim:
            out[i] = await be.run(fn, *args)
    async with trio.open_nursery() as n:
        for i, args in enumerate(arglist):
            n.start_soon(one, i, args)
    return out


async def timed(coro):
    c0, t0 = cpu(), time.perf_counter()
    res = await coro
    return time.perf_counter() - t0, cpu() - c0, res


async def bench_rep(be, payload, size, key, r):
    H11.READ_NUM_BYTES = be.h11_read
    nparts, gib = size // PART, size / (1024 * MiB)
    uid = (await be.run(call, "create_multipart_upload", Key=key))["UploadId"]
    w, c, etags = await timed(fan_out(be, upload_part, [
        (key, uid, n + 1, be.body(payload)) for n in range(nparts)], 8))
    await be.run(call, "complete_multipart_upload", Key=key, UploadId=uid, MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": n + 1} for n, e in enumerate(etags)]})
    r["upload MiB/s"].append(size / MiB / w); r["upload CPU s/GiB"].append(c / gib)
    w, c, lens = await timed(fan_out(be, get_len, [(key, n * PART) for n in range(nparts)], 8))
    assert lens == [PART] * nparts and await be.run(get_range, key, size - PART) == payload
    r["download MiB/s"].append(size / MiB / w); r["download CPU s/GiB"].append(c / gib)
    await be.run(call, "delete_object", Key=key)
    lat, c0 = [], cpu()
    for _ in range(500):
        t0 = time.perf_counter(); await be.run(head, "small"); lat.append(time.perf_counter() - t0)
    r["HEAD seq median ms"].append(statistics.median(lat) * 1e3)
    r["HEAD seq p99 ms"].append(statistics.quantiles(lat, n=100)[98] * 1e3)
    r["HEAD seq CPU us/op"].append((cpu() - c0) / 500 * 1e6)
    w, c, _ = await timed(fan_out(be, head, [("small",)] * 500, 16))
    r["HEAD x16 ops/s"].append(500 / w); r["HEAD x16 CPU us/op"].append(c / 500 * 1e6)


async def stall_proxy(upstream, task_status=trio.TASK_STATUS_IGNORED):
    """Forward to S3; if a connection's *first* request line has 'stallbody', go
    silent after 64 KiB of the response; if it has 'stall', never answer."""
    host, port = upstream.split("//")[1].split(":")
    async def pump(a, b):
        while data := await a.receive_some(MiB):
            await b.send_all(data)
    async def handle(cs):
        try:
            async with cs:
                first = await cs.receive_some(MiB)
                line = first.split(b"\r\n", 1)[0]
                if b"stall" in line and b"stallbody" not in line:
                    await trio.sleep_forever()
                async with await trio.open_tcp_stream(host, int(port)) as up:
                    await up.send_all(first)
                    if b"stallbody" in line:
                        await cs.send_all(await up.receive_some(65536))
                        await trio.sleep_forever()
                    async with trio.open_nursery() as n:
                        n.start_soon(pump, cs, up); await pump(up, cs); n.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    await trio.serve_listeners(handle, listeners)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


async def robustness(name, bridge, proxy, payload):
    print(f"\n--- {name}: trio.move_on_after(1) around a stalled call (read_timeout=60, 1 try)")
    for key, op in (("stall", head), ("stallbody", get_range)):
        # fresh client, no warm-up: the stalled request must open its own connection
        async with Backend(name, proxy, bridge, read_timeout=60,
                           retries={"total_max_attempts": 1}) as be:
            t0 = time.perf_counter()
            with trio.move_on_after(1) as cs:
                await be.run(op, key)
            t1 = time.perf_counter()
            with trio.move_on_after(10) as cs2:
                ok = await be.run(get_range, "small", 0, 4096) == payload[:4096]
            print(f"  {key:9s}: cancelled={cs.cancelled_caught} after {t1 - t0:.2f}s; same client "
                  f"afterwards: {'OK' if ok and not cs2.cancelled_caught else 'HUNG/BAD'} "
                  f"in {time.perf_counter() - t1:.3f}s")
    print(f"--- {name}: connect_timeout=1 read_timeout=1 retries standard total_max_attempts=3"
          " (bound: 3 x 1 s + backoff <= 1 + 2 s)")
    for label, ep, key, op in (("dead port (refused)", f"http://127.0.0.1:{free_port()}", "small",
                                head), ("stall before headers", proxy, "stall", head),
                               ("stall mid-body", proxy, "stallbody", get_range)):
        async with Backend(name, ep, bridge, connect_timeout=1, read_timeout=1) as be:
            t0, err = time.perf_counter(), "no error"
            with trio.move_on_after(60) as cs:
                try:
                    await be.run(op, key)
                except Exception as e:
                    err = type(e).__name__
            print(f"  {label:21s}: {time.perf_counter() - t0:5.2f}s -> "
                  f"{'UNBOUNDED (60 s guard hit)' if cs.cancelled_caught else err}")


async def main(args):
    payload, bridge, ep = os.urandom(PART), Bridge(), args.endpoint
    size = max(PART, args.size_mib * MiB // PART * PART)
    async with Backend("A", ep) as a, Backend("A+", ep, h11_read=MiB) as a2, \
            Backend("B", ep, bridge) as b:
        for _ in range(60):  # a fresh weed server needs a few seconds
            with trio.move_on_after(5):
                try:
                    await a.run(call, "create_bucket"); break
                except Exception as e:
                    if "BucketAlready" in type(e).__name__: break
            await trio.sleep(1)
        await a.run(call, "put_object", Key="small", Body=ChunkedBody(payload[:4096]))
        await a.run(call, "put_object", Key="stallbody", Body=ChunkedBody(payload))
        bes, res = [a, a2, b], {be.name: {k: [] for k in METRICS} for be in (a, a2, b)}
        for be in bes:  # warm-up: open connections
            await fan_out(be, head, [("small",)] * 32, 16)
        for rep in range(args.reps):
            for be in bes[rep % 3:] + bes[:rep % 3]:
                await bench_rep(be, payload, size, f"big-{rep}-{be.name}", res[be.name])
                print(f"rep {rep} {be.name:2s}: " + ", ".join(
                    f"{k} {v[-1]:.1f}" for k, v in res[be.name].items()), flush=True)
        H11.READ_NUM_BYTES = H11_READ
        med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in res.items()}
        def fmt(v):
            return f"{statistics.median(v):.2f} ({min(v):.1f}-{max(v):.1f})"
        print(f"\n{f'median of {args.reps} reps, {size // MiB} MiB':26s}"
              + "".join(f"{n:>24s}" for n in res) + f"{'A/B':>7s}{'A+/B':>7s}")
        for k in METRICS:
            print(f"{k:26s}" + "".join(f"{fmt(r[k]):>24s}" for r in res.values())
                  + "".join(f"{med[n][k] / med['B'][k]:7.2f}" for n in ("A", "A+")))
        print("\nbridge round trip of a no-op coroutine (7 interleaved rounds of 1000 calls):")
        async def noop():
            return 1
        async def loop(fn):
            for _ in range(1000):
                await fn(noop())
        variants = {"this Bridge (task + token)": bridge,
                    "run_coroutine_threadsafe + token": bridge.rct_token,
                    "run_coroutine_threadsafe + to_thread": bridge.rct_thread}
        ts = {k: [] for k in variants}
        for _ in range(7):
            for k, fn in variants.items():
                ts[k].append(await timed(loop(fn)))
        for k, t in ts.items():
            print(f"  {k:38s}{statistics.median(x[0] for x in t) * 1e3:7.1f} us wall"
                  f"{statistics.median(x[1] for x in t) * 1e3:7.1f} us CPU per call (median)")
        naive = [(await timed(a.run(call, "put_object", Key="naive", Body=payload)))[:2]
                 for _ in range(3)]
        print(f"\nA, plain bytes Body instead of ChunkedBody: 8 MiB put_object median "
              f"{statistics.median(w for w, _ in naive):.2f}s wall, "
              f"{statistics.median(c for _, c in naive):.2f}s CPU")
        async with trio.open_nursery() as n:
            proxy = await n.start(stall_proxy, ep)
            await robustness("A", None, proxy, payload)
            await robustness("B", bridge, proxy, payload)
            n.cancel_scope.cancel()
    bridge.loop.call_soon_threadsafe(bridge.loop.stop)


def start_weed(tmp):
    weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    ports = []
    while len(ports) < 4:  # http port p and grpc port p+10000 must both be free
        p = random.randrange(20000, 30000)
        try:
            for q in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
            ports.append(p)
        except OSError:
            pass
    m, v, f, s3 = ports
    proc = subprocess.Popen(
        [weed, "server", f"-dir={tmp}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={m}", f"-volume.port={v}", f"-filer.port={f}", "-s3", f"-s3.port={s3}",
         "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
         "-master.volumeSizeLimitMB=1024", "-volume.max=0", f"-filer.localSocket={tmp}/f.sock",
         f"-s3.localSocket={tmp}/s3.sock"],
        stdout=open(os.path.join(tmp, "weed.log"), "wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{s3}", ports


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint"); ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    args, proc, tmp = ap.parse_args(), None, None
    try:
        if args.endpoint is None:
            tmp = tempfile.mkdtemp(prefix="s3bench-")
            proc, args.endpoint, ports = start_weed(tmp)
            print(f"started weed (pid {proc.pid}) at {args.endpoint}, data in {tmp}")
        trio.run(main, args)
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill(); proc.wait()
            for p in ports:  # weed leaves its gRPC unix sockets in /tmp
                for f in glob.glob(f"/tmp/seaweedfs-*-grpc-{p + 10000}.sock"):
                    os.remove(f)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
