// The peer of bench/ingest.sh: a Graph notification endpoint written the way
// Microsoft's Node sample (microsoftgraph/nodejs-webhooks-sample) writes its
// route: Express, the JSON body parser, the validation handshake, a
// clientState check per item, then 202. It keeps nothing: an item is lost if
// the process dies after the 202.
import express from "express";

const clientState = process.env.MSGRAPH_WEBHOOKS_CLIENT_STATE ?? "bench-client-state";
const app = express();
app.use(express.json({ limit: "1mb" }));

app.post("/", (req, res) => {
  if (req.query && req.query.validationToken) {
    res.set("Content-Type", "text/plain");
    res.send(req.query.validationToken);
    return;
  }
  let accepted = 0;
  for (const notification of req.body?.value ?? []) {
    if (notification.clientState === clientState) {
      accepted += 1; // the sample would process the notification here
    }
  }
  res.locals.accepted = accepted;
  res.status(202).end();
});

const server = app.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const { address, port } = server.address();
  console.log(`listening local=${address}:${port}`);
});
