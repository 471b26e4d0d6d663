//! etcdsync `etcd` plugin.
