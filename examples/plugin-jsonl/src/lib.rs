//! Example third-party etcdsync plugins: a `jsonl_file` source that follows a file of JSON-lines
//! changes, a `jsonl` sink that appends every change as one JSON line to a file, and a `tag`
//! transform that adds a constant column. They register with the same registry as the built-ins
//! and are selected by `type:` in YAML.

pub mod jsonl_sink;
pub mod jsonl_source;
pub mod tag_transform;
