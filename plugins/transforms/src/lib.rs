//! etcdsync's built-in transforms, each a plugin selected by `type:` and scoped by `tables:`:
//! `key_template`, `value`, `rename_columns`, `drop_columns`, `filter`. They run in config order
//! between the source and the sink; each sees the previous one's output.

mod columns;
mod filter;
mod key_template;
mod schema_cache;
mod scope;
mod template;
mod value;
