//! Validation tokens: the JWTs Graph attaches to rich notifications.

mod provider;

pub use provider::install as install_jwt_provider;
