//! `--admin-addr`, shared by `listen` and `work`.

use std::net::SocketAddr;

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
