"""The ceiling: raw channel-layer send -> receive throughput between two processes.

No database and no job: one process sends ``--messages`` messages shaped like
sisy's wake-ups on one channel, one after the other; another process receives
them. This bounds what any worker built on the same channel layer and Redis can
reach. ``--layer core`` measures channels-redis's ``RedisChannelLayer`` (four
round trips a send, three commands a receive), ``--layer sisy`` sisy's (one
round trip a send; a receive is ``receive_hint``, one command, as sisy's
workers receive wake-ups). Run by bench/compare.py::

    python bench_ceiling.py --url redis://127.0.0.1:6390/0 --messages 20000 --layer sisy

prints ``{"messages": ..., "send_per_s": ..., "end_to_end_per_s": ...}``.
The layer's ``capacity`` is raised above the message count so that the sender
never waits on a full channel: the figure is the receiver's pace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from channels_redis.core import RedisChannelLayer

import sisy.layers

LAYERS = {"core": RedisChannelLayer, "sisy": sisy.layers.RedisChannelLayer}

CHANNEL = "bench.ceiling"


def layer(url: str, messages: int, kind: str) -> RedisChannelLayer:
    return LAYERS[kind](
        hosts=[{"address": url, "socket_timeout": 10}], capacity=messages + 100, expiry=600
    )


async def receive(url: str, messages: int, kind: str) -> dict[str, Any]:
    channel_layer = layer(url, messages, kind)
    # Connect before saying ready, so the sender's clock does not include it.
    await channel_layer.connection(0).ping()
    print("ready", flush=True)
    first = last = 0.0
    receive_one = getattr(channel_layer, "receive_hint", channel_layer.receive)
    for index in range(messages):
        await receive_one(CHANNEL)
        last = time.time()
        if index == 0:
            first = last
    await channel_layer.flush()
    return {"first_received": first, "last_received": last}


async def send(url: str, messages: int, kind: str) -> dict[str, Any]:
    channel_layer = layer(url, messages, kind)
    await channel_layer.connection(0).ping()
    payloads = [{"type": "sisy.run", "job": str(uuid.uuid4())} for _ in range(messages)]
    started = time.time()
    for payload in payloads:
        await channel_layer.send(CHANNEL, payload)
    return {"send_started": started, "send_finished": time.time()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--layer", choices=sorted(LAYERS), default="core")
    parser.add_argument("--receiver", action="store_true", help="(internal) be the receiver")
    args = parser.parse_args()
    if args.receiver:
        print(json.dumps(asyncio.run(receive(args.url, args.messages, args.layer))), flush=True)
        return
    # fmt: off
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--url", args.url, "--messages", str(args.messages),
         "--layer", args.layer, "--receiver"],
        stdout=subprocess.PIPE, text=True,
    )
    # fmt: on
    assert receiver.stdout is not None
    # Stopped by bench/compare.py: unwind, so that the receiver is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if receiver.stdout.readline().strip() != "ready":
        receiver.kill()
        raise SystemExit("the receiver did not start")
    try:
        sent = asyncio.run(send(args.url, args.messages, args.layer))
        out, _ = receiver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        raise SystemExit("the receiver did not get every message within 300 s") from None
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    received = json.loads(out.strip().splitlines()[-1])
    elapsed = received["last_received"] - sent["send_started"]
    print(
        json.dumps(
            {
                "messages": args.messages,
                "send_per_s": args.messages / (sent["send_finished"] - sent["send_started"]),
                "end_to_end_per_s": args.messages / elapsed,
            }
        )
    )


if __name__ == "__main__":
    main()
