//! Cross-plugin integration tests against real servers.
