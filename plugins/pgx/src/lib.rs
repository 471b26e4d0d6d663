//! etcdsync `pgx` plugin.
