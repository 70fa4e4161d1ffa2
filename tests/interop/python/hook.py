"""Receives what `msgraph-webhooks listen --forward http://127.0.0.1:8000/hook
--forward-secret whsec_...` sends: verifies each event's Standard Webhooks
signature and prints it. Needs `pip install standardwebhooks`."""

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["FORWARD_SECRET"])  # the --forward-secret
done, lock = set(), threading.Lock()  # delivery is at least once: a retry repeats webhook-id


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            event = webhook.verify(body, dict(self.headers))  # forged, altered or stale: raises
        except WebhookVerificationError:
            self.send_response(400)
            self.end_headers()
            return
        with lock:  # the server answers on several threads
            if self.headers["webhook-id"] not in done:
                done.add(self.headers["webhook-id"])
                print(event["kind"], event.get("id"), event.get("resource"), flush=True)
        self.send_response(204)  # any 2xx completes the item; other answers are retried
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Hook)
print("listening", server.server_address[1], file=sys.stderr, flush=True)
server.serve_forever()
