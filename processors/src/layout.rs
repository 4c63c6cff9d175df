//! Where things are in a data directory (local or in an object store): the
//! names every storage module agrees on, depending on none of them.
//!
//! ```text
//! DATA/partition=P/                 a partition task's directory
//!   TABLE/day=YYYY-MM-DD/part-SEQ.parquet
//!   _paicha/manifest.json           the commit point
//!   _paicha/state/…                 state files the manifest lists
//!   _paicha/sealed/…                sealed months' file lists
//! ```

use std::path::{Path, PathBuf};

/// Directory of paicha's own files inside the data directory.
pub const META_DIR: &str = "_paicha";

/// State files (dedupe ids, each operator's saved state), listed by the
/// manifest.
pub const STATE_DIR: &str = "_paicha/state";

/// The manifest, relative to a task's directory.
pub const MANIFEST: &str = "_paicha/manifest.json";

/// A partition task's directory name is this and its partition number.
pub const TASK_PREFIX: &str = "partition=";

/// The directory of partition task `partition` under `root`.
pub fn task_dir(root: &Path, partition: i32) -> PathBuf {
    root.join(format!("{TASK_PREFIX}{partition}"))
}
