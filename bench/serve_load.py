"""Load test of ``prefheads serve``: the batching worker against one request at a time, side by side.

On loopback only. It saves a head folder for the bundled SmolLM2 (a seeded SwiGLU head and an
identity head), then starts ``prefheads serve`` twice in turn — ``--no-batching`` (a lock per
request, the service as it was) and the batching worker — and drives each with closed-loop
clients at several concurrencies, posting real HH-RLHF conversations (bundled helpful-base test
slice; single-turn conversations unless ``--all-turns``) with 2 and with 8 candidate replies to
``POST /score``. Per cell it prints requests/s,
p50 / p99 latency, errors, the mean requests per backbone pass (from ``/metrics``) and the
largest difference between any returned reward (every head) and offline
``pm.score_all_heads`` on the same request. Then a 10× overload of the batching server (ten
times its ``--max-queue`` at once) must give 503s with ``Retry-After`` — no timeouts, no
crashes — and a healthy server that still scores correctly afterwards.

Bounded: each cell stops after ``--requests`` requests per client (at least ``--min-requests``)
or ``--cell-seconds``, whichever comes first; the servers are stopped at the end (SIGTERM:
queued work finishes).

    .venv/bin/python bench/serve_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hh_requests, machine, table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cpu(proc: subprocess.Popen) -> float:
    """CPU seconds (user + system, every thread) the server process has used."""
    import psutil

    t = psutil.Process(proc.pid).cpu_times()
    return t.user + t.system


def start_server(heads: Path, batching: bool, max_queue: int, log: Path, threads: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "prefheads.cli", "serve", "--heads", str(heads), "--port", str(port),
           "--max-queue", str(max_queue), "--max-candidates", "64"] + ([] if batching else ["--no-batching"])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not come up; see {log}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)  # graceful: uvicorn drains, then the app's shutdown
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def pass_stats(url: str) -> tuple[float, float]:
    """(sum, count) of prefheads_batch_requests from /metrics."""
    import httpx

    vals = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        for key in ("prefheads_batch_requests_sum", "prefheads_batch_requests_count"):
            if line.startswith(key + " "):
                vals[key] = float(line.split()[1])
    return vals.get("prefheads_batch_requests_sum", 0.0), vals.get("prefheads_batch_requests_count", 0.0)


def max_diff(body: dict, want: dict[str, list[float]]) -> float:
    """Largest |reward - offline| over every candidate and head of one /score response."""
    return max(abs(item["rewards"][h] - want[h][item["index"]]) for item in body["ranked"] for h in want)


async def drive(url: str, payloads: list[dict], wants: list[dict], concurrency: int, n_requests: int,
                cap_s: float) -> dict:
    """Closed loop: ``concurrency`` clients post until ``n_requests`` are sent or ``cap_s`` passes."""
    import httpx

    lat, errors, diffs = [], [], []
    todo = iter(range(n_requests))
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()

        async def client_loop() -> None:
            for k in todo:
                if time.perf_counter() - t0 > cap_s:
                    return
                i = k % len(payloads)
                t = time.perf_counter()
                try:
                    r = await client.post("/score", json=payloads[i])
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                    continue
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(str(r.status_code))
                    continue
                diffs.append(max_diff(r.json(), wants[i]))

        await asyncio.gather(*[client_loop() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(lat), "seconds": wall, "req/s": len(diffs) / wall,
            "p50 s": statistics.median(lat) if lat else float("nan"),
            "p99 s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
            "errors": len(errors), "max |Δ|": max(diffs) if diffs else float("nan")}


async def overload(url: str, payload: dict, n: int) -> dict:
    """``n`` requests at once: how many are answered, refused (503 + Retry-After), or fail."""
    import httpx

    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one():
            try:
                r = await client.post("/score", json=payload)
                return r.status_code, r.headers.get("retry-after")
            except httpx.HTTPError as e:
                return type(e).__name__, None

        t0 = time.perf_counter()
        res = await asyncio.gather(*[one() for _ in range(n)])
        wall = time.perf_counter() - t0
    codes = [c for c, _ in res]
    return {"sent": n, "200": codes.count(200), "503": codes.count(503),
            "503 with Retry-After": sum(1 for c, h in res if c == 503 and h and h.isdigit()),
            "other": sum(1 for c in codes if c not in (200, 503)), "seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", default="2,8", help="candidate replies per request")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--pool", type=int, default=32, help="distinct requests per candidate count (cycled)")
    ap.add_argument("--requests", type=int, default=2, help="requests per client in a cell")
    ap.add_argument("--min-requests", type=int, default=8, help="at least this many requests per cell")
    ap.add_argument("--cell-seconds", type=float, default=90, help="stop sending new requests after this")
    ap.add_argument("--max-queue", type=int, default=64, help="the batching server's queue")
    ap.add_argument("--modes", default="lock,batching")
    ap.add_argument("--all-turns", action="store_true", help="also multi-turn conversations (longer requests)")
    ap.add_argument("--no-overload", action="store_true", help="skip the 10x overload of the batching server")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of both servers (on a shared 2-core box, 2 threads ran 2-4x slower and erratic)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    import httpx

    from prefheads import PreferenceModel

    cand_counts = [int(x) for x in args.candidates.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="prefheads-serve-load-"))
    pm = PreferenceModel.from_pretrained()
    torch.manual_seed(0)
    pm.add_head("helpful", "swiglu")  # default init: rewards of a trained head's order, not hundreds
    pm.add_head("probe", "identity", activate=False)
    pm.save_heads(work / "heads")

    pools = {}
    for k in cand_counts:
        reqs = hh_requests(args.pool, k, single_turn=not args.all_turns)
        t = time.perf_counter()
        ref = pm.score_all_heads([p for p, cs in reqs for _ in cs], [c for _, cs in reqs for c in cs],
                                 shared_prefix=False)  # the offline reference, full encoding
        wants, start = [], 0
        for _, cs in reqs:
            wants.append({h: v[start:start + len(cs)].tolist() for h, v in ref.items()})
            start += len(cs)
        tokens = [sum(len(it.ids) for it in pm.encode([p] * len(cs), cs)) for p, cs in reqs]
        pools[k] = ([{"prompt": p, "candidates": cs} for p, cs in reqs], wants, statistics.mean(tokens))
        print(f"{k} candidates: {args.pool} requests, mean {statistics.mean(tokens):.0f} tokens each "
              f"(prompt + every reply); offline reference in {time.perf_counter() - t:.1f}s", flush=True)
    del pm

    rows, summary = [], {}
    for mode in args.modes.split(","):
        proc, url = start_server(work / "heads", mode == "batching", args.max_queue, work / f"{mode}.log", args.threads)
        for k in cand_counts:  # warm-up: first-call costs out of the timings
            asyncio.run(drive(url, pools[k][0][:2], pools[k][1][:2], 1, 2, 600))
        for k in cand_counts:
            payloads, wants, mean_tok = pools[k]
            for c in concs:
                s0, n0 = pass_stats(url)
                cpu0 = server_cpu(proc)
                n = max(args.min_requests, args.requests * c)
                cell = asyncio.run(drive(url, payloads, wants, c, n, args.cell_seconds))
                s1, n1 = pass_stats(url)
                row = {"server": mode, "candidates": k, "tokens/request": round(mean_tok), "concurrency": c, **cell,
                       "requests/pass": (s1 - s0) / (n1 - n0) if n1 > n0 else float("nan"),
                       "server cpu s/request": (server_cpu(proc) - cpu0) / max(1, cell["requests"])}
                rows.append(row)
                print(json.dumps(row), flush=True)
        if mode == "batching" and not args.no_overload:
            n = 10 * args.max_queue
            summary["overload"] = asyncio.run(overload(url, pools[cand_counts[0]][0][0], n))
            health = httpx.get(url + "/health", timeout=30)
            after = httpx.post(url + "/score", json=pools[cand_counts[0]][0][1], timeout=600)
            summary["after overload"] = {
                "health": health.status_code, "status": health.json().get("status"), "score": after.status_code,
                "max |Δ|": max_diff(after.json(), pools[cand_counts[0]][1][1]) if after.status_code == 200 else None}
            print(json.dumps(summary), flush=True)
        summary[f"{mode} exit code"] = stop_server(proc)

    print(f"\nmachine: {machine()}; server threads {args.threads}; load average {os.getloadavg()[0]:.1f}; "
          "model SmolLM2-135M-Instruct fp32; "
          f"heads: swiglu + identity; logs in {work}")
    print(table(rows, ["server", "candidates", "tokens/request", "concurrency", "requests", "seconds", "req/s",
                       "p50 s", "p99 s", "errors", "requests/pass", "server cpu s/request", "max |Δ|"]))
    for k in cand_counts:
        for c in concs:
            lock = next((r for r in rows if r["server"] == "lock" and r["candidates"] == k and r["concurrency"] == c), None)
            bat = next((r for r in rows if r["server"] == "batching" and r["candidates"] == k and r["concurrency"] == c), None)
            if lock and bat:
                print(f"{k} candidates, concurrency {c}: batching {bat['req/s'] / lock['req/s']:.2f}x the requests/s; "
                      f"p99 {bat['p99 s']:.2f}s vs {lock['p99 s']:.2f}s")
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
