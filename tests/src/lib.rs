//! Cross-plugin integration tests against real servers.

pub mod mysql;
pub mod pg;
