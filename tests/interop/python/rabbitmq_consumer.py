"""Reads what `msgraph-webhooks listen --forward
'amqp://guest:guest@127.0.0.1:5672/%2f?routing_key=graph-events'` publishes
and prints each event. Needs `pip install pika`."""

import json
import os
import sys

import pika

params = pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
channel = pika.BlockingConnection(params).channel()
queue = os.environ.get("QUEUE", "graph-events")
channel.queue_declare(queue=queue, durable=True)  # declared before listen publishes to it


def on_message(ch, method, properties, body):
    event = json.loads(body)  # properties.message_id is event["id"]
    print(event["kind"], event.get("id"), event.get("resource"), flush=True)
    ch.basic_ack(method.delivery_tag)


channel.basic_qos(prefetch_count=100)
channel.basic_consume(queue=queue, on_message_callback=on_message)
print("consuming", file=sys.stderr, flush=True)
channel.start_consuming()
