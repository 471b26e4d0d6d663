//! Cross-plugin integration tests against real servers.

pub mod common;
pub mod mysql;
pub mod pg;
