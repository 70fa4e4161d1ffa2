"""Reads what `msgraph-webhooks listen --forward
nats://127.0.0.1:4222/graph.events?create_stream=true` publishes, through a
durable JetStream consumer, and prints each event. Needs `pip install nats-py`."""

import asyncio
import json
import os
import sys

import nats


async def main():
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    # Durable: the server remembers what this consumer acknowledged.
    sub = await js.pull_subscribe(
        os.environ.get("SUBJECT", "graph.events"), durable=os.environ.get("DURABLE", "graph-app")
    )
    print("consuming", file=sys.stderr, flush=True)
    while True:
        try:
            messages = await sub.fetch(100, timeout=5)
        except nats.errors.TimeoutError:
            continue
        for msg in messages:
            event = json.loads(msg.data)  # msg.headers["Nats-Msg-Id"] is event["id"]
            print(event["kind"], event.get("id"), event.get("resource"), flush=True)
            await msg.ack()


asyncio.run(main())
