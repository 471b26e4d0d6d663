//! The `Transform` plugin contract: a synchronous map from one change to zero or more changes,
//! run in config order between source and sink.

use crate::change::Change;
use crate::error::Result;
use std::fmt::Debug;

/// A built transform.
pub trait Transform: Send {
    /// Maps `change` into `out` (push nothing to drop it). Errors stop the pipeline; they should
    /// name the table and key.
    fn apply(&mut self, change: Change, out: &mut Vec<Change>) -> Result<()>;
}

/// A transform's configuration, selected in YAML by `type:`.
#[typetag::serde(tag = "type")]
pub trait TransformConfig: Debug + Send + Sync {
    /// Checks the configuration; errors name the key and the fix.
    fn validate(&self) -> Result<()>;

    fn build(&self) -> Result<Box<dyn Transform>>;
}

/// Runs a chain of transforms over a batch of changes, in order.
pub struct Chain {
    transforms: Vec<Box<dyn Transform>>,
    scratch: Vec<Change>,
}

impl Chain {
    pub fn new(transforms: Vec<Box<dyn Transform>>) -> Self {
        Self {
            transforms,
            scratch: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.transforms.is_empty()
    }

    /// Applies every transform, in config order, to every change of the batch.
    pub fn apply(&mut self, mut batch: Vec<Change>) -> Result<Vec<Change>> {
        for transform in &mut self.transforms {
            let mut next = std::mem::take(&mut self.scratch);
            next.clear();
            for change in batch.drain(..) {
                transform.apply(change, &mut next)?;
            }
            self.scratch = batch;
            batch = next;
        }
        Ok(batch)
    }
}
