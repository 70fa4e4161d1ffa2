//! Validation tokens: the JWTs Graph attaches to rich notifications
//! (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>). A valid one proves Microsoft minted it for the app and
//! tenant; it is not bound to the delivery's content, so a captured token,
//! the `clientState` and the public certificate together can forge content
//! (README, "What the checks prove").
//!
//! [`TokenValidator`] checks them against signing keys from a [`Jwks`]
//! (Microsoft's, fetched and cached, by default; or a file), and fails
//! closed: encrypted items whose delivery has tokens missing, `null`,
//! malformed, or any one invalid, or none for the item's tenant, are
//! rejected, each with a [`TokenError`] of its own.
//!
//! Microsoft's helpers skip the publisher check and fail open on missing
//! tokens (msgraph-sdk-dotnet-core `ITokenValidableExtension`, msgraph-sdk-java-core `TokenValidable`); this module does
//! neither.

mod jwks;
mod provider;
mod validate;

pub use jwks::{Jwks, JwksError, MICROSOFT_JWKS_URL};
pub use provider::install as install_jwt_provider;
pub use validate::{
    CHANGE_TRACKING_APP_ID, TokenError, TokenValidator, TokenVersion, VerifiedToken,
};
