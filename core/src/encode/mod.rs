//! Encodings shared by every sink: the JSON value of a row (DESIGN §3) and the etcd key of a row
//! (DESIGN §2).

pub mod json;
pub mod key;
