"""Microsoft's Python clients against the emulator over HTTPS, unmodified.

MSAL's ConfidentialClientApplication and azure-identity's
ClientSecretCredential get app tokens from the emulator's authority; the
Graph SDK (msgraph-sdk, Kiota) with its Azure Identity auth provider
creates, gets, lists, updates, reauthorizes and deletes a subscription,
and reads Graph's error envelope as an ODataError for a refused one.

The emulator's CA must be trusted: run with SSL_CERT_FILE and
REQUESTS_CA_BUNDLE pointing at its ca.pem. Usage:

    python clients.py EMULATOR_URL TENANT CLIENT_ID SECRET NOTIFICATION_URL

Prints one line per step and exits 0 only if every step passed.
"""

import asyncio
import datetime
import sys
from urllib.parse import urlparse


def step(name, detail=""):
    print(f"ok {name} {detail}".rstrip(), flush=True)


def msal_token(base, tenant, client_id, secret):
    import msal

    app = msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=f"{base}/{tenant}",
        # MSAL asks login.microsoftonline.com about unknown hosts by
        # default; the emulator answers the same discovery itself.
        instance_discovery=f"{base}/common/discovery/instance",
    )
    result = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    if "access_token" not in result:
        raise SystemExit(f"msal: {result}")
    step("msal", f"msal {msal.__version__}")
    return result["access_token"]


def credential(base, tenant, client_id, secret):
    from azure.identity import ClientSecretCredential

    host = urlparse(base).netloc
    cred = ClientSecretCredential(
        tenant,
        client_id,
        secret,
        authority=host,
        disable_instance_discovery=True,
    )
    token = cred.get_token("https://graph.microsoft.com/.default")
    if not token.token:
        raise SystemExit("azure-identity: no token")
    import azure.identity

    step("azure-identity", f"azure-identity {azure.identity.__version__}")
    return cred


async def graph_sdk(base, cred, notification_url):
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError
    from msgraph.generated.models.subscription import Subscription

    host = urlparse(base).hostname
    auth = AzureIdentityAuthenticationProvider(
        cred,
        scopes=["https://graph.microsoft.com/.default"],
        allowed_hosts=[host],
    )
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = f"{base}/v1.0"
    client = GraphServiceClient(request_adapter=adapter)

    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    created = await client.subscriptions.post(
        Subscription(
            change_type="created",
            notification_url=notification_url,
            resource="users/ada@contoso.com/mailFolders('Inbox')/messages",
            expiration_date_time=expires,
            client_state="interop-client-state",
        )
    )
    step("create", created.id)
    got = await client.subscriptions.by_subscription_id(created.id).get()
    assert got.id == created.id, got
    step("get")
    listed = await client.subscriptions.get()
    assert any(s.id == created.id for s in listed.value), listed
    step("list")
    later = expires + datetime.timedelta(hours=1)
    updated = await client.subscriptions.by_subscription_id(created.id).patch(
        Subscription(expiration_date_time=later)
    )
    assert updated.expiration_date_time > expires, updated.expiration_date_time
    step("update")
    await client.subscriptions.by_subscription_id(created.id).reauthorize.post()
    step("reauthorize")
    await client.subscriptions.by_subscription_id(created.id).delete()
    step("delete")
    try:
        await client.subscriptions.post(
            Subscription(
                change_type="created",
                notification_url=notification_url,
                resource="users/ada@contoso.com/messages",
                # Over the kind's maximum lifetime: Graph refuses it.
                expiration_date_time=expires + datetime.timedelta(days=30),
            )
        )
    except ODataError as e:
        code = e.error.code if e.error else None
        if e.response_status_code != 400 or not code:
            raise SystemExit(f"refused create: {e.response_status_code} {code}")
        step("odata-error", f"{e.response_status_code} {code}")
    else:
        raise SystemExit("a create over the maximum lifetime was accepted")
    import msgraph

    step("msgraph-sdk", f"msgraph-sdk {getattr(msgraph, '__version__', '?')}")


def main():
    base, tenant, client_id, secret, notification_url = sys.argv[1:6]
    base = base.rstrip("/")
    msal_token(base, tenant, client_id, secret)
    cred = credential(base, tenant, client_id, secret)
    asyncio.run(graph_sdk(base, cred, notification_url))
    print("all passed", flush=True)


if __name__ == "__main__":
    main()
