#!/usr/bin/env python3
"""Hostile clients against a running `msgraph-webhooks listen`, on loopback,
while Graph-like deliveries (one whole POST on a new connection) are timed.

  bench/attack.py h2-idle   ADDR [--conns 1030]   # preface + SETTINGS, answer PINGs, never a stream
  bench/attack.py slow      ADDR [--conns 50]     # silent / dribbled headers / dribbled body; reconnect at once

Either way, --posts deliveries (default 10) spread over --spread seconds
(default 20) go out beside the attack; each counts as delivered if it got
202 within 3 s. Prints one line of figures. The target must run with
--client-state s (or --allow-any-client-state). Stdlib only; every socket
goes to ADDR, which must be a loopback address; it stops by itself after
--spread + a few seconds.
"""

import argparse
import asyncio
import ipaddress
import json
import time

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + b"\0\0\0\0" + payload


async def h2_idle(host, port, stop, stats):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["connect_failed"] += 1
        return
    stats["opened"] += 1
    writer.write(H2_PREFACE + frame(4, 0))
    buf = b""
    opened = time.monotonic()
    try:
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 0.5)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 9:
                n = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + n:
                    break
                kind, flags, payload = buf[3], buf[4], buf[9:9 + n]
                buf = buf[9 + n:]
                if kind == 6 and not flags & 1:
                    writer.write(frame(6, 1, payload))
                elif kind == 4 and not flags & 1:
                    writer.write(frame(4, 1))
                elif kind == 7:
                    stats["goaway"] += 1
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    if not stop.is_set():
        stats["closed_by_server"] += 1
        stats["held_s"].append(time.monotonic() - opened)
    writer.close()


async def slow(host, port, i, stop, stats):
    dribble = [b"", b"POST / HTTP/1.1\r\nhost: x\r\nx-a: ",
               b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"value\":["][i % 3]
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.01)
            continue
        stats["opened"] += 1
        opened = time.monotonic()
        sent = 0
        try:
            while not stop.is_set():
                if sent < len(dribble):
                    writer.write(dribble[sent:sent + 1])
                    await writer.drain()
                sent += 1
                try:
                    data = await asyncio.wait_for(reader.read(256), 0.3)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    break
        except (ConnectionError, OSError):
            pass
        stats["held_s"].append(time.monotonic() - opened)
        writer.close()


async def deliver(host, port, n):
    item = {
        "id": f"attack-bench-{time.time_ns()}-{n}", "subscriptionId": "sub", "clientState": "s",
        "changeType": "created", "resource": f"Users/u/Messages/{n}",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": str(n)},
    }
    body = json.dumps({"value": [item]}).encode()
    request = (b"POST / HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\nconnection: close\r\n\r\n" % (host.encode(), len(body))) + body
    started = time.monotonic()
    try:
        async def once():
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            line = await reader.readline()
            writer.close()
            return line
        line = await asyncio.wait_for(once(), 3.0)
        ok = line.startswith(b"HTTP/1.1 202")
    except (asyncio.TimeoutError, OSError):
        ok = False
    return ok, time.monotonic() - started


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["h2-idle", "slow"])
    parser.add_argument("addr")
    parser.add_argument("--conns", type=int)
    parser.add_argument("--posts", type=int, default=10)
    parser.add_argument("--spread", type=float, default=20.0)
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("loopback targets only")
    port = int(port)
    conns = args.conns or (1030 if args.mode == "h2-idle" else 50)
    stop = asyncio.Event()
    stats = {"opened": 0, "connect_failed": 0, "goaway": 0, "closed_by_server": 0, "held_s": []}
    if args.mode == "h2-idle":
        attackers = [asyncio.create_task(h2_idle(host, port, stop, stats)) for _ in range(conns)]
    else:
        attackers = [asyncio.create_task(slow(host, port, i, stop, stats)) for i in range(conns)]
    await asyncio.sleep(2.0)
    results = []
    for n in range(args.posts):
        results.append(await deliver(host, port, n))
        await asyncio.sleep(args.spread / args.posts)
    stop.set()
    await asyncio.wait(attackers, timeout=5)
    for task in attackers:
        task.cancel()
    ok = sum(1 for good, _ in results if good)
    latencies = sorted(t for good, t in results if good)
    held = sorted(stats["held_s"])
    print(f"{args.mode}: {conns} attacker sockets, {stats['opened']} opened, "
          f"{stats['closed_by_server']} closed by the server (GOAWAY {stats['goaway']}), "
          f"longest held {held[-1] if held else 0:.1f} s; "
          f"legitimate POSTs with 202 within 3 s: {ok}/{len(results)}"
          + (f", slowest {latencies[-1] * 1000:.0f} ms" if latencies else ""))


if __name__ == "__main__":
    asyncio.run(main())
