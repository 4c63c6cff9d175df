//! Shared storage on an object store: an S3-compatible bucket (`s3://`), or
//! a directory through the same API (`file://`; `memory://` in tests).
//!
//! With `--storage URL` the object store, not the local data directory, is
//! where a partition task commits: each checkpoint uploads the files its
//! manifest lists that are not there yet, then the manifest itself, so a
//! reader that finds a manifest finds every file it names. The local data
//! directory is the instance's working copy of the tasks it runs. A task
//! that moves to another instance is downloaded from the store there, and
//! every instance's SQL reads the tasks it does not run from the store.
//!
//! The layout in the store is the data directory's:
//! `PREFIX/partition=N/<table>/day=YYYY-MM-DD/part-*.parquet`, with each
//! task's committed manifest at `PREFIX/partition=N/_paicha/manifest.json`.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use crate::layout::{META_DIR, TASK_PREFIX};
use crate::store::Manifest;

/// An object store and the prefix paicha's data lives under.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    url: Url,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl Remote {
    /// Opens the store a URL names: `s3://BUCKET/PREFIX` (credentials,
    /// region and endpoint from the `AWS_*` environment variables, as the
    /// AWS tools read them: `AWS_ENDPOINT` for MinIO or another
    /// S3-compatible store), `file:///ABSOLUTE/PATH`, or `memory://` (this
    /// process only).
    pub fn open(url: &str) -> Result<Arc<Self>> {
        let mut parsed = Url::parse(url).map_err(|e| {
            anyhow!("--storage `{url}` is not a URL ({e}); give s3://BUCKET/PREFIX or file:///PATH")
        })?;
        if !parsed.path().ends_with('/') {
            let path = format!("{}/", parsed.path());
            parsed.set_path(&path);
        }
        let (store, root): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "s3" | "s3a" => {
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(parsed.as_str())
                    .build()
                    .with_context(|| format!("cannot open the S3 store {url}"))?;
                (Arc::new(store), ObjectPath::from_url_path(parsed.path())?)
            }
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| anyhow!("--storage `{url}` is not an absolute file:// path"))?;
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (
                    Arc::new(object_store::local::LocalFileSystem::new()),
                    ObjectPath::from_absolute_path(&dir)?,
                )
            }
            "memory" => (
                Arc::new(object_store::memory::InMemory::new()),
                ObjectPath::default(),
            ),
            other => bail!("--storage `{url}`: unknown scheme `{other}`; give s3://BUCKET/PREFIX or file:///PATH"),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("paicha-storage")
            .enable_all()
            .build()
            .context("cannot start the storage runtime")?;
        Ok(Arc::new(Remote {
            store,
            root,
            url: parsed,
            rt,
        }))
    }

    /// The URL of the data's root, ending in `/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL of a file, relative to the root.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}{rel}", self.url)
    }

    /// The store, for a query engine to read Parquet from.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    fn path(&self, rel: &str) -> ObjectPath {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Runs `fut` on the storage runtime and waits for it, from any thread
    /// (also one of another runtime's, where `block_on` would panic).
    /// Unconstrained: on a thread of another runtime, a task that has used
    /// up tokio's cooperative budget (128 operations, here 128 files read
    /// for one query) would see every poll of the handle answer "pending"
    /// at once, and `block_on` would spin forever without reaching the end
    /// of that task's budget.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<T> {
        futures::executor::block_on(tokio::task::unconstrained(self.rt.spawn(fut)))
            .map_err(|e| anyhow!("storage task failed: {e}"))?
            .map_err(anyhow::Error::from)
    }

    /// Reads `rel`, `None` if it does not exist.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        let (store, path) = (self.store.clone(), self.path(rel));
        let got = self.run(async move {
            match store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.with_context(|| format!("cannot read {}", self.url_of(rel)))
    }

    /// Writes `bytes` to `rel` (whole: a reader sees all of it or nothing).
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let (store, path) = (self.store.clone(), self.path(rel));
        self.run(async move { store.put(&path, bytes.into()).await.map(|_| ()) })
            .with_context(|| format!("cannot write {}", self.url_of(rel)))
    }

    /// Deletes `rel` if it exists.
    pub fn delete(&self, rel: &str) -> Result<()> {
        let (store, path) = (self.store.clone(), self.path(rel));
        self.run(async move {
            match store.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        })
        .with_context(|| format!("cannot delete {}", self.url_of(rel)))
    }

    /// The partition tasks that have a directory in the store.
    pub fn tasks(&self) -> Result<Vec<i32>> {
        let (store, root) = (self.store.clone(), self.root.clone());
        let listed = self
            .run(async move { store.list_with_delimiter(Some(&root)).await })
            .with_context(|| format!("cannot list {}", self.url))?;
        let mut tasks: Vec<i32> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.strip_prefix(TASK_PREFIX)?.parse().ok())
            .collect();
        tasks.sort_unstable();
        Ok(tasks)
    }

    /// The committed manifest of the data under `prefix` (`""` for the
    /// root, `partition=N/` for a task) and its bytes, if there is one.
    pub fn manifest(&self, prefix: &str) -> Result<Option<(Manifest, Bytes)>> {
        let rel = format!("{prefix}{META_DIR}/manifest.json");
        let Some(bytes) = self.get(&rel)? else {
            return Ok(None);
        };
        let mut m: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is corrupt", self.url_of(&rel)))?;
        m.read_sealed(&|path| {
            let rel = format!("{prefix}{path}");
            self.get(&rel)?
                .map(|b| b.to_vec())
                .with_context(|| format!("{} is missing", self.url_of(&rel)))
        })?;
        Ok(Some((m, bytes)))
    }
}

/// Every file a manifest names, relative to its directory.
fn referenced(m: &Manifest) -> BTreeSet<String> {
    m.files().cloned().collect()
}

/// One partition task's directory in the store, as its local store commits
/// it: what is already uploaded, so each checkpoint sends only new files.
#[derive(Debug)]
pub struct Mirror {
    remote: Arc<Remote>,
    prefix: String,
    uploaded: Mutex<BTreeSet<String>>,
    /// The checkpoint of the manifest this mirror last found or put in the
    /// store: the one a commit must replace.
    last: Mutex<Option<u64>>,
}

impl Mirror {
    /// Makes the local directory `dir` of task `partition` a copy of the
    /// task's committed state in the store, and returns the mirror that
    /// uploads its next commits. The store is the commit point: a local
    /// manifest it does not hold (written before a crash cut its upload
    /// short, or before another instance ran the task) is discarded with
    /// every file, like a checkpoint that never committed.
    pub fn sync(remote: &Arc<Remote>, partition: i32, dir: &Path) -> Result<Self> {
        let prefix = format!("{TASK_PREFIX}{partition}/");
        let local_manifest = dir.join(META_DIR).join("manifest.json");
        let found = remote.manifest(&prefix)?;
        let last = found.as_ref().map(|(m, _)| m.checkpoint);
        let uploaded = match found {
            Some((m, bytes)) => {
                let same = std::fs::read(&local_manifest).is_ok_and(|l| l == bytes.as_ref());
                let files = referenced(&m);
                if !same {
                    clear(dir)?;
                    for rel in &files {
                        let bytes = remote.get(&format!("{prefix}{rel}"))?.with_context(|| {
                            format!("{} names {rel}, which is missing", remote.url_of(&prefix))
                        })?;
                        write_new(&dir.join(rel), &bytes)?;
                    }
                    write_new(&local_manifest, &bytes)?;
                }
                files
            }
            None => {
                // Nothing committed in the store: whatever is here never was.
                clear(dir)?;
                BTreeSet::new()
            }
        };
        Ok(Mirror {
            remote: remote.clone(),
            prefix,
            uploaded: Mutex::new(uploaded),
            last: Mutex::new(last),
        })
    }

    /// Uploads the files `m` names that are not in the store yet (from the
    /// local directory `root`), then `m` itself (the commit), then deletes
    /// the files `m` no longer names.
    pub fn commit(&self, root: &Path, m: &Manifest, manifest_bytes: &[u8]) -> Result<()> {
        let mut uploaded = self
            .uploaded
            .lock()
            .map_err(|_| anyhow!("the upload list is unavailable"))?;
        let mut last = self
            .last
            .lock()
            .map_err(|_| anyhow!("the commit record is unavailable"))?;
        // Fencing: an instance the group has given up on (paused, cut off)
        // may still believe it runs the task; it must not overwrite what the
        // task's new owner committed. (A read before the write, not an
        // atomic swap: it narrows the window to one round trip.)
        let current = self
            .remote
            .manifest(&self.prefix)?
            .map(|(m, _)| m.checkpoint);
        if current != *last {
            bail!(
                "{} was committed by another instance (checkpoint {}); this instance no longer runs it",
                self.remote.url_of(&self.prefix),
                current.map_or("none".to_string(), |c| c.to_string())
            );
        }
        let files = referenced(m);
        for rel in files.difference(&uploaded.clone()) {
            let path = root.join(rel);
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            self.remote
                .put(&format!("{}{rel}", self.prefix), Bytes::from(bytes))?;
            uploaded.insert(rel.clone());
        }
        self.remote.put(
            &format!("{}{META_DIR}/manifest.json", self.prefix),
            Bytes::copy_from_slice(manifest_bytes),
        )?;
        *last = Some(m.checkpoint);
        for rel in uploaded.difference(&files).cloned().collect::<Vec<_>>() {
            self.remote.delete(&format!("{}{rel}", self.prefix))?;
            uploaded.remove(&rel);
        }
        Ok(())
    }
}

/// Removes the local directory `dir` and everything in it, if it exists.
fn clear(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

impl crate::store::Mirror for Mirror {
    fn commit(&self, root: &Path, m: &Manifest, manifest_bytes: &[u8]) -> Result<()> {
        Mirror::commit(self, root, m, manifest_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(seq: u64, files: &[&str]) -> Manifest {
        let mut m = Manifest {
            checkpoint: seq,
            ..Default::default()
        };
        m.tables.insert(
            "symptom_counts".into(),
            files.iter().map(|f| f.to_string()).collect(),
        );
        m
    }

    fn commit(mirror: &Mirror, dir: &Path, m: &Manifest, contents: &[(&str, &str)]) -> Result<()> {
        for (rel, text) in contents {
            write_new(&dir.join(rel), text.as_bytes())?;
        }
        let bytes = serde_json::to_vec(m)?;
        write_new(&dir.join(META_DIR).join("manifest.json"), &bytes)?;
        mirror.commit(dir, m, &bytes)
    }

    /// A query reads many files of another instance's task from inside a
    /// task of DataFusion's runtime: past tokio's cooperative budget every
    /// read must still finish (it spun forever at the 129th).
    #[test]
    fn many_reads_from_inside_another_runtime_finish() {
        let remote = Remote::open("memory://").unwrap();
        remote.put("f", Bytes::from_static(b"x")).unwrap();
        // The last handle is dropped here, outside any runtime.
        let reader = remote.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap();
            let n = rt.block_on(async move {
                tokio::spawn(async move {
                    (0..1000)
                        .filter(|_| reader.get("f").ok().flatten().is_some())
                        .count()
                })
                .await
                .unwrap()
            });
            let _ = done.send(n);
        });
        let n = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("1000 reads did not finish within 60 s");
        assert_eq!(n, 1000);
    }

    #[test]
    fn a_task_moves_through_the_store_and_a_stale_owner_is_fenced_off() {
        let remote = Remote::open("memory://").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

        // Instance A runs task 3 and commits twice; the second commit
        // retires the first file, which leaves the store with it.
        let mirror_a = Mirror::sync(&remote, 3, &a).unwrap();
        commit(
            &mirror_a,
            &a,
            &manifest(1, &["x/1.parquet"]),
            &[("x/1.parquet", "one")],
        )
        .unwrap();
        commit(
            &mirror_a,
            &a,
            &manifest(2, &["x/2.parquet"]),
            &[("x/2.parquet", "two")],
        )
        .unwrap();
        assert_eq!(remote.get("partition=3/x/1.parquet").unwrap(), None);
        assert_eq!(remote.tasks().unwrap(), vec![3]);

        // B takes it over: its directory becomes the store's copy, whatever
        // it held (an old local commit the store never got is discarded).
        write_new(&b.join("x/9.parquet"), b"uncommitted").unwrap();
        write_new(&b.join(META_DIR).join("manifest.json"), b"{}").unwrap();
        let mirror_b = Mirror::sync(&remote, 3, &b).unwrap();
        assert_eq!(std::fs::read(b.join("x/2.parquet")).unwrap(), b"two");
        assert!(!b.join("x/9.parquet").exists());
        commit(
            &mirror_b,
            &b,
            &manifest(3, &["x/3.parquet"]),
            &[("x/3.parquet", "three")],
        )
        .unwrap();

        // A, still believing it runs the task, may not overwrite B's commit.
        let err = commit(
            &mirror_a,
            &a,
            &manifest(3, &["x/3.parquet"]),
            &[("x/3.parquet", "stale")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("committed by another instance"), "{err}");
        assert_eq!(
            remote.get("partition=3/x/3.parquet").unwrap().as_deref(),
            Some(&b"three"[..])
        );
        let (m, _) = remote.manifest("partition=3/").unwrap().unwrap();
        assert_eq!(m.checkpoint, 3);
    }
}
