//! Integration tests: real sockets on 127.0.0.1, real processes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod catalog_rows;
mod cli_env;
mod doctor;
mod durability;
mod emulator_api;
mod emulator_cli;
mod emulator_delivery;
mod emulator_delta;
mod emulator_fidelity_notifications;
mod emulator_fidelity_subscriptions;
mod emulator_handshake;
mod emulator_https;
mod emulator_quota;
mod emulator_reauthorization;
mod emulator_rules;
mod emulator_throttle;
mod event_grid;
mod fixtures;
mod forward_brokers;
mod forward_faults;
mod forward_http;
mod hostile;
mod hostile_bodies;
mod inspector;
mod inspector_browser;
mod interop;
mod limits;
mod listener;
mod parser_props;
mod recipes;
mod resync;
mod resync_cli;
mod rich;
mod roles;
mod shutdown;
mod store_files;
mod subscriptions;
mod subscriptions_cli;
mod subscriptions_client;
mod subscriptions_instances;
mod support;
mod tls;
mod tls_delivery;
mod tunnel;
