"""Load test of ``clip4str serve`` on 127.0.0.1: concurrent clients sending real word crops.

Starts the service in a subprocess for each phase and drives it with N client threads, each sending one
crop per request over its own keep-alive connection, as fast as answers come back:

1. batching on  (``--max-batch B --max-wait-ms W``): throughput, p50/p99 latency;
2. batching off (``--max-batch 1``): the same;
3. overload: a short queue (``--max-queue``) and twice the clients, sending without pause: how many
   answers are 503 (each with Retry-After), and that every other answer is still right.

Every 200 answer is compared with ``clip4str read --json`` on the same files (same text; confidence within
1e-4). Bounded: at most ``clients x requests`` requests per phase and ``--time-limit`` seconds each.

    python benchmarks/bench_serve.py --model ../shared/golden/clip4str_tiny.ckpt \\
        --images ../shared/realdata/iiit5k_test/test --clients 16 --requests 16
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # never anything else: this is a local load test
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class PhaseResult:
    name: str
    requests: int = 0
    ok: int = 0
    refused_503: int = 0
    retry_after_missing: int = 0
    other_errors: int = 0
    wrong: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    batches: int = 0

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "phase": self.name,
            "requests": self.requests,
            "ok": self.ok,
            "503": self.refused_503,
            "503_without_retry_after": self.retry_after_missing,
            "other_errors": self.other_errors,
            "wrong_vs_read": self.wrong,
            "images_per_s": round(self.ok / self.wall_s, 2) if self.wall_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "forward_passes": self.batches,
            "images_per_pass": round(self.ok / self.batches, 2) if self.batches else None,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Service:
    """``clip4str serve`` in a subprocess, on a free port of 127.0.0.1."""

    def __init__(self, model: str, device: str, extra: list[str]) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "clip4str", "serve", "--host", HOST, "--port", str(self.port)]
        cmd += ["--device", device, "--log-level", "warning", *extra]
        if model:
            cmd += ["--model", model]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the service did not start: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            time.sleep(0.2)

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> int:
        self.proc.terminate()  # SIGTERM: drains, exits 0
        return self.proc.wait(60)


def run_phase(
    name: str,
    service: Service,
    crops: list[tuple[str, bytes]],
    expected: dict[str, tuple[str, float]],
    clients: int,
    requests: int,
    time_limit: float,
    pause_s: float = 0.0,
) -> PhaseResult:
    result = PhaseResult(name)
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    stop_at: list[float] = []
    before = service.health()["batches"]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(HOST, service.port, timeout=120)
        barrier.wait()
        for r in range(requests):
            if time.perf_counter() > stop_at[0]:
                break
            name_, data = crops[(index * requests + r) % len(crops)]
            body, ctype = multipart(name_, data)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/read", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                payload = resp.read()
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(HOST, service.port, timeout=120)
                with lock:
                    result.requests += 1
                    result.other_errors += 1
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                result.requests += 1
                if resp.status == 200:
                    result.ok += 1
                    result.latencies_ms.append(elapsed)
                    got = json.loads(payload)["results"][0]
                    text, conf = expected[name_]
                    if got["text"] != text or abs(got["confidence"] - conf) > 1e-4 * max(conf, 1e-3) + 2e-6:
                        result.wrong += 1
                elif resp.status == 503:
                    result.refused_503 += 1
                    result.retry_after_missing += resp.getheader("Retry-After") is None
                else:
                    result.other_errors += 1
            if pause_s:
                time.sleep(pause_s)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop_at.append(start + time_limit)
    barrier.wait()
    for t in threads:
        t.join(time_limit + 120)
    result.wall_s = time.perf_counter() - start
    result.batches = service.health()["batches"] - before
    return result


def read_reference(model: str, paths: list[Path], device: str) -> dict[str, tuple[str, float]]:
    """``clip4str read --json`` on the crops: name → (text, confidence)."""
    cmd = [sys.executable, "-m", "clip4str", "read", "--json", "--quiet", "--device", device]
    if model:
        cmd += ["--model", model]
    out = subprocess.run(cmd + [str(p) for p in paths], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {Path(r["path"]).name: (r["text"], r["confidence"]) for r in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="", help="release name or checkpoint (default: the package's)")
    parser.add_argument("--images", type=Path, required=True, help="folder of word crops")
    parser.add_argument("--count", type=int, default=64, help="distinct crops used (default: 64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--requests", type=int, default=16, help="requests per client (default: 16)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--overload-queue", type=int, default=4, help="--max-queue of the overload phase")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase at most")
    parser.add_argument("--phases", default="on,off,overload", help="comma-separated: on, off, overload")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.count) < 1 or args.clients > 256 or args.requests > 1000:
        parser.error("--clients 1..256, --requests 1..1000, --count >= 1")

    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in SUFFIXES)[: args.count]
    if not paths:
        parser.error(f"no images in {args.images}")
    crops = [(p.name, p.read_bytes()) for p in paths]
    print(
        f"{len(crops)} crops from {args.images}; reading them with `clip4str read` for reference", flush=True
    )
    expected = read_reference(args.model, paths, args.device)

    results = []
    phases = args.phases.split(",")
    base = ["--max-queue", "1024", "--max-wait-ms", str(args.max_wait_ms)]
    for phase in phases:
        if phase == "on":
            extra, clients, name = [*base, "--max-batch", str(args.max_batch)], args.clients, "batching on"
        elif phase == "off":
            extra, clients, name = [*base, "--max-batch", "1"], args.clients, "batching off"
        elif phase == "overload":
            extra = ["--max-queue", str(args.overload_queue), "--max-batch", str(args.overload_queue)]
            extra += ["--max-images", str(args.overload_queue), "--max-wait-ms", str(args.max_wait_ms)]
            clients, name = 2 * args.clients, f"overload (queue {args.overload_queue})"
        else:
            parser.error(f"unknown phase {phase!r}")
        service = Service(args.model, args.device, extra)
        try:
            if phase != "overload":  # warm-up, not counted: first passes of each batch size
                run_phase("warm-up", service, crops, expected, clients, 2, args.time_limit)
            res = run_phase(name, service, crops, expected, clients, args.requests, args.time_limit)
        finally:
            code = service.stop()
        summary = res.summary() | {"clients": clients, "sigterm_exit": code}
        results.append(summary)
        print(json.dumps(summary), flush=True)

    print()
    print(
        "| phase | clients | requests | 200 | 503 | images/s | p50 ms | p99 ms | images/pass | wrong vs read |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in results:
        print(
            f"| {s['phase']} | {s['clients']} | {s['requests']} | {s['ok']} | {s['503']} | {s['images_per_s']} | "
            f"{s['p50_ms']} | {s['p99_ms']} | {s['images_per_pass']} | {s['wrong_vs_read']} |"
        )
    meta = {
        "model": args.model or "(default)",
        "device": args.device,
        "torch_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    bad = any(s["wrong_vs_read"] or s["other_errors"] or s["503_without_retry_after"] for s in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
