//! A local Microsoft Graph for tests and local work: Graph's side of the
//! protocol.

mod encrypt;

pub use encrypt::{encrypt_resource, thumbprint};
