//! The checkpoint writer: a thread that encodes a checkpoint's Parquet
//! files, writes its state files and then commits its manifest, while the
//! consumer thread goes on counting.
//!
//! Encoding Parquet costs about as much as decoding the events did, so on
//! the consumer thread it halved throughput while the machine's other core
//! idled. Checkpoints are committed in order, one at a time: the manifest of
//! checkpoint `n` is on disk only after every file it lists, and after the
//! manifest of `n - 1`. A crash before the commit leaves the previous
//! manifest, whose offsets are where consumption resumes: nothing counted
//! twice, nothing lost (the files written meanwhile are removed as
//! uncommitted on restart).

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use arrow::record_batch::RecordBatch;

use crate::store::{Manifest, Store};

/// A file of a checkpoint, as it will be written.
pub enum Content {
    /// Record batches, written as one Parquet file.
    Parquet(Vec<RecordBatch>),
    /// Bytes written as they are.
    Bytes(Vec<u8>),
}

/// One checkpoint for the writer: its files, then its manifest.
pub struct Commit {
    /// Files to write, relative to the data directory.
    pub files: Vec<(String, Content)>,
    /// The manifest to commit once every file is on disk.
    pub manifest: Manifest,
    /// Files the manifest no longer lists, removed after the commit.
    pub superseded: Vec<String>,
}

/// The writer thread and its two queues.
pub struct Writer {
    commits: Option<SyncSender<Commit>>,
    done: Receiver<Result<u64>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread, writing into `store`.
    pub fn start(store: Store) -> Result<Self> {
        // One checkpoint queued behind the one being written: enough to
        // overlap, and it bounds the rows held for writing.
        let (commits, queue) = mpsc::sync_channel::<Commit>(1);
        let (report, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("paicha-checkpoint".into())
            .spawn(move || {
                for c in queue {
                    let seq = c.manifest.checkpoint;
                    let result = write(&store, c).map(|()| seq);
                    let failed = result.is_err();
                    if report.send(result).is_err() || failed {
                        // Nothing after a failed checkpoint may be committed.
                        break;
                    }
                }
            })
            .context("cannot start the checkpoint writer thread")?;
        Ok(Writer {
            commits: Some(commits),
            done,
            thread: Some(thread),
        })
    }

    /// Queues a checkpoint; waits while one is already queued.
    pub fn submit(&self, c: Commit) -> Result<()> {
        self.commits
            .as_ref()
            .and_then(|tx| tx.send(c).ok())
            .ok_or_else(|| anyhow!("the checkpoint writer has stopped"))
    }

    /// The sequence number of a checkpoint committed since the last call,
    /// if any, without waiting; the error of one that failed.
    pub fn try_committed(&self) -> Result<Option<u64>> {
        match self.done.try_recv() {
            Ok(r) => r.map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(anyhow!("the checkpoint writer has stopped")),
        }
    }

    /// Waits for the next checkpoint to be committed.
    pub fn committed(&self) -> Result<u64> {
        self.done
            .recv()
            .map_err(|_| anyhow!("the checkpoint writer has stopped"))?
    }
}

impl Drop for Writer {
    /// Finishes what is queued: a checkpoint handed over is committed even
    /// when the processor is dropped right after (a clean shutdown).
    fn drop(&mut self) {
        self.commits.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write(store: &Store, c: Commit) -> Result<()> {
    for (rel, content) in &c.files {
        match content {
            Content::Parquet(batches) => store.write_parquet(rel, batches)?,
            Content::Bytes(bytes) => store.write_file(rel, bytes)?,
        }
    }
    store.commit(&c.manifest)?;
    for old in c.superseded {
        // Superseded by the manifest just committed.
        let _ = std::fs::remove_file(store.root().join(old));
    }
    Ok(())
}
