//! etcdsync core: the change model, plugin traits and registry, configuration, the pipeline that
//! connects a source through transforms to a sink, and the value/key encodings of DESIGN §2–3.
//! Core knows no database and no etcd; plugins do.

pub mod change;
pub mod config;
pub mod duration;
pub mod encode;
pub mod error;
pub mod inspect;
pub mod leadership;
pub mod pipeline;
pub mod registry;
pub mod secret;
pub mod sink;
pub mod source;
pub mod tables;
pub mod telemetry;
pub mod transform;
pub mod value;

pub use change::{Change, Checkpoint, Commit, Message, Op, Position, Row, TableId, TableSchema};
pub use error::{Error, ErrorKind, Result};
pub use value::Value;

/// Re-exported so plugins register themselves without naming these crates.
pub use {async_trait::async_trait, inventory, typetag};
