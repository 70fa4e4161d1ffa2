//! `--admin-addr`, shared by `listen` and `work`.

use std::net::SocketAddr;
use std::sync::Arc;

use msgraph_webhooks::inspector::Inspector;
use msgraph_webhooks::{Handler, ReceiverBuilder};

use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// Where to serve /metrics and /healthz, apart from the notification
    /// port (which never serves metrics); `off` serves none. Keep it
    /// reachable by operators only.
    #[arg(
        long,
        default_value = "127.0.0.1:9464",
        value_name = "ADDR|off",
        value_parser = parse_admin_addr,
        env = "MSGRAPH_WEBHOOKS_ADMIN_ADDR"
    )]
    admin_addr: Admin,
    /// A bearer token every admin request but /healthz must carry
    /// (`Authorization: Bearer TOKEN`; the inspector page takes it as
    /// /inspector/#token=TOKEN). Needed for the inspector when the admin
    /// address is not loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MSGRAPH_WEBHOOKS_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Deliveries the inspector page (/inspector/ on the admin address)
    /// keeps, newest first; 0 turns it off.
    #[arg(
        long,
        default_value_t = msgraph_webhooks::inspector::DEFAULT_CAPACITY,
        value_name = "N",
        env = "MSGRAPH_WEBHOOKS_INSPECTOR_CAPACITY"
    )]
    inspector_capacity: usize,
    /// Shows each item's decrypted resource in the inspector: anyone who
    /// reaches the admin address then reads your tenant's data. For a
    /// developer's machine.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_INSPECTOR_SHOW_SECRETS")]
    inspector_show_secrets: bool,
}

#[derive(Clone, Copy, Debug)]
enum Admin {
    Off,
    At(SocketAddr),
}

fn parse_admin_addr(value: &str) -> Result<Admin, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(Admin::Off);
    }
    value
        .parse()
        .map(Admin::At)
        .map_err(|_| format!("expected an address such as 127.0.0.1:9464, or off: {value:?}"))
}

impl AdminArgs {
    /// Gives `builder` the inspector and the admin token these flags ask
    /// for. Without a token, an admin address other machines can reach gets
    /// no inspector (it would show every delivery to anyone).
    pub(crate) fn configure<H: Handler>(
        &self,
        mut builder: ReceiverBuilder<H>,
    ) -> ReceiverBuilder<H> {
        let Admin::At(addr) = self.admin_addr else {
            return builder;
        };
        if let Some(token) = &self.admin_token {
            builder = builder.admin_token(token.clone());
        }
        if self.inspector_capacity == 0 {
            return builder;
        }
        if self.admin_token.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                admin = %addr,
                "the inspector is off: the admin address is reachable from other machines; pass \
                 --admin-token (or MSGRAPH_WEBHOOKS_ADMIN_TOKEN) to serve it there"
            );
            return builder;
        }
        let mut inspector = Inspector::new(self.inspector_capacity);
        if self.inspector_show_secrets {
            tracing::warn!(
                "the inspector shows decrypted resources to whoever reaches the admin address"
            );
            inspector = inspector.showing_secrets();
        }
        let page = match &self.admin_token {
            Some(_) => format!("http://{addr}/inspector/#token=…"),
            None => format!("http://{addr}/inspector/"),
        };
        tracing::info!(%page, "inspector");
        builder.inspector(Arc::new(inspector))
    }

    /// Binds the admin address, unless it is off.
    pub(crate) async fn bind(&self) -> Result<Option<TcpListener>, String> {
        match self.admin_addr {
            Admin::Off => Ok(None),
            Admin::At(addr) => TcpListener::bind(addr).await.map(Some).map_err(|e| {
                format!("cannot serve the admin address {addr}: {e} (pass --admin-addr with another address, or off)")
            }),
        }
    }
}
