// Receives what `msgraph-webhooks listen --forward http://127.0.0.1:8000/hook
// --forward-secret whsec_...` sends: verifies each event's Standard Webhooks
// signature and prints it. Needs `npm install standardwebhooks`.
import http from "node:http";
import { Webhook } from "standardwebhooks";

const webhook = new Webhook(process.env.FORWARD_SECRET); // the --forward-secret
const done = new Set(); // delivery is at least once: a retry repeats webhook-id

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    let event;
    try {
      event = webhook.verify(Buffer.concat(chunks), req.headers); // forged, altered or stale: throws
    } catch {
      res.writeHead(400).end();
      return;
    }
    const id = req.headers["webhook-id"];
    if (!done.has(id)) {
      done.add(id);
      console.log(event.kind, event.id, event.resource);
    }
    res.writeHead(204).end(); // any 2xx completes the item; other answers are retried
  });
});
server.listen(Number(process.env.PORT ?? 8000), "127.0.0.1", () =>
  console.error("listening", server.address().port),
);
