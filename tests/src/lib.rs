//! Cross-plugin integration tests against real servers.

pub mod pg;
pub mod mysql;
