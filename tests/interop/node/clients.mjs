// Microsoft's Node clients against the emulator over HTTPS, unmodified.
//
// MSAL Node's ConfidentialClientApplication and @azure/identity's
// ClientSecretCredential get app tokens from the emulator's authority; the
// Graph JS client (@microsoft/microsoft-graph-client) with its
// TokenCredentialAuthenticationProvider creates, gets, lists, updates,
// reauthorizes and deletes a subscription, and reads Graph's error envelope
// as a GraphError for refused ones.
//
// The emulator's CA must be trusted: run with NODE_EXTRA_CA_CERTS pointing
// at its ca.pem (TLS checks stay on). Usage:
//
//     node clients.mjs EMULATOR_URL TENANT CLIENT_ID SECRET NOTIFICATION_URL
//
// Prints one line per step and exits 0 only if every step passed.

import { createRequire } from "node:module";

import { ConfidentialClientApplication } from "@azure/msal-node";
import { ClientSecretCredential } from "@azure/identity";
import { Client, GraphError } from "@microsoft/microsoft-graph-client";
const require = createRequire(import.meta.url);
// The auth provider's documented import path is a CommonJS folder, which
// an ES module can't import by that name: require it as the docs write it.
const { TokenCredentialAuthenticationProvider } = require(
  "@microsoft/microsoft-graph-client/authProviders/azureTokenCredentials",
);
const GRAPH_SCOPE = "https://graph.microsoft.com/.default";

function step(name, detail = "") {
  console.log(`ok ${name} ${detail}`.trimEnd());
}

function fail(message) {
  console.error(message);
  process.exit(1);
}

function version(pkg) {
  return require(`${pkg}/package.json`).version;
}

async function msalToken(base, tenant, clientId, secret) {
  const authority = `${base}/${tenant}`;
  const app = new ConfidentialClientApplication({
    auth: {
      clientId,
      clientSecret: secret,
      authority,
      // MSAL trusts Microsoft's hosts and asks login.microsoftonline.com
      // about any other; an authority on a host of one's own (ADFS, B2C,
      // a private cloud, this emulator) is named here, as MSAL documents.
      // MSAL then reads the emulator's own OpenID configuration.
      // https://learn.microsoft.com/en-us/entra/msal/javascript/node/configuration
      knownAuthorities: [new URL(base).host],
    },
  });
  const result = await app.acquireTokenByClientCredential({ scopes: [GRAPH_SCOPE] });
  if (!result?.accessToken) fail(`msal: ${JSON.stringify(result)}`);
  step("msal", `@azure/msal-node ${version("@azure/msal-node")}`);
  return result.accessToken;
}

async function msalDiscovery(base, tenant, clientId, secret) {
  // The other way MSAL documents for a host it doesn't know: the instance
  // discovery answer, given as configuration. Here it is the emulator's own
  // answer, so MSAL's parser of Microsoft's discovery document reads it
  // (msal-common's docs/performance.md: "Provide the entire JSON response").
  const authority = `${base}/${tenant}`;
  const discovery = new URL(`${base}/common/discovery/instance`);
  discovery.searchParams.set("api-version", "1.1");
  discovery.searchParams.set("authorization_endpoint", `${authority}/oauth2/v2.0/authorize`);
  const answer = await fetch(discovery);
  if (!answer.ok) fail(`instance discovery: ${answer.status} ${await answer.text()}`);
  const app = new ConfidentialClientApplication({
    auth: {
      clientId,
      clientSecret: secret,
      authority,
      cloudDiscoveryMetadata: await answer.text(),
    },
  });
  const result = await app.acquireTokenByClientCredential({ scopes: [GRAPH_SCOPE] });
  if (!result?.accessToken) fail(`msal discovery: ${JSON.stringify(result)}`);
  step("msal-discovery");
}

async function credential(base, tenant, clientId, secret) {
  const cred = new ClientSecretCredential(tenant, clientId, secret, {
    authorityHost: base,
    // As for Azure Stack or a private cloud: without it, the credential's
    // MSAL asks login.microsoftonline.com whether the host is an authority.
    // https://learn.microsoft.com/en-us/javascript/api/@azure/identity/clientsecretcredentialoptions
    disableInstanceDiscovery: true,
  });
  const token = await cred.getToken(GRAPH_SCOPE);
  if (!token?.token) fail("azure-identity: no token");
  step("azure-identity", `@azure/identity ${version("@azure/identity")}`);
  return cred;
}

async function refused(client, body, what) {
  try {
    await client.api("/subscriptions").post(body);
  } catch (e) {
    if (!(e instanceof GraphError)) throw e;
    if (e.statusCode !== 400 || !e.code || !e.message) {
      fail(`${what}: ${e.statusCode} ${e.code} ${e.message}`);
    }
    return e;
  }
  fail(`${what} was accepted`);
}

async function graphClient(base, cred, notificationUrl) {
  const authProvider = new TokenCredentialAuthenticationProvider(cred, {
    scopes: [GRAPH_SCOPE],
  });
  const client = Client.initWithMiddleware({
    authProvider,
    baseUrl: base,
    defaultVersion: "v1.0",
    // The client sends the token to Graph's hosts only, and to these
    // (a national cloud's Graph is one of its known hosts; this one isn't).
    customHosts: new Set([new URL(base).hostname]),
  });

  const expires = new Date(Date.now() + 60 * 60 * 1000);
  const created = await client.api("/subscriptions").post({
    changeType: "created",
    notificationUrl,
    resource: "users/ada@contoso.com/mailFolders('Inbox')/messages",
    expirationDateTime: expires.toISOString(),
    clientState: "interop-client-state",
  });
  if (!created?.id) fail(`create: ${JSON.stringify(created)}`);
  step("create", created.id);

  const path = `/subscriptions/${created.id}`;
  const got = await client.api(path).get();
  if (got.id !== created.id) fail(`get: ${JSON.stringify(got)}`);
  step("get");

  const listed = await client.api("/subscriptions").get();
  if (!listed.value?.some((s) => s.id === created.id)) fail(`list: ${JSON.stringify(listed)}`);
  step("list");

  const later = new Date(expires.getTime() + 60 * 60 * 1000);
  const updated = await client.api(path).patch({ expirationDateTime: later.toISOString() });
  if (!(new Date(updated.expirationDateTime) > expires)) {
    fail(`update: ${updated.expirationDateTime}`);
  }
  step("update");

  await client.api(`${path}/reauthorize`).post({});
  step("reauthorize");

  await client.api(path).delete();
  try {
    await client.api(path).get();
    fail("the deleted subscription is still there");
  } catch (e) {
    if (!(e instanceof GraphError) || e.statusCode !== 404) throw e;
  }
  step("delete");

  const lifetime = await refused(
    client,
    {
      changeType: "created",
      notificationUrl,
      resource: "users/ada@contoso.com/messages",
      // Over the kind's maximum lifetime: Graph refuses it.
      expirationDateTime: new Date(expires.getTime() + 30 * 24 * 60 * 60 * 1000).toISOString(),
    },
    "a create over the maximum lifetime",
  );
  step("graph-error", `${lifetime.statusCode} ${lifetime.code}`);

  const resource = await refused(
    client,
    {
      changeType: "created",
      notificationUrl,
      resource: "no/such/resource",
      expirationDateTime: expires.toISOString(),
    },
    "a create on an unknown resource",
  );
  step("graph-error-resource", `${resource.statusCode} ${resource.code}`);
  const graph = "@microsoft/microsoft-graph-client";
  step("microsoft-graph-client", `${graph} ${version(graph)}`);
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 5) {
    fail("usage: node clients.mjs EMULATOR_URL TENANT CLIENT_ID SECRET NOTIFICATION_URL");
  }
  const [url, tenant, clientId, secret, notificationUrl] = args;
  const base = url.replace(/\/+$/, "");
  await msalToken(base, tenant, clientId, secret);
  await msalDiscovery(base, tenant, clientId, secret);
  const cred = await credential(base, tenant, clientId, secret);
  await graphClient(base, cred, notificationUrl);
  console.log("all passed");
}

main().catch((e) => fail(e?.stack ?? String(e)));
