//! Integration tests: real sockets on 127.0.0.1, real processes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod rich;
mod support;
