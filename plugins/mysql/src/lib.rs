//! etcdsync `mysql` plugin.
