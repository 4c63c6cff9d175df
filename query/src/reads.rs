//! Bytes a query reads from storage, counted against the query memory pool.
//!
//! DataFusion's operators reserve what they buffer, but the Parquet reader
//! does not: it fetches every projected column chunk of a row group before
//! decoding it, and holds those bytes while the query is paused between
//! steps. Sixteen clients scanning a wide table held a gigabyte that way,
//! outside `--query-memory`. Every object store the query session reads
//! through is wrapped here, so each fetched range holds a reservation from
//! the pool for exactly as long as any slice of it lives, and a read the
//! pool cannot hold fails the query with "Resources exhausted".

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// An object store whose reads count against a memory pool while they
/// live.
#[derive(Debug)]
pub(crate) struct Counted {
    inner: Arc<dyn ObjectStore>,
    pool: Arc<dyn MemoryPool>,
}

impl Counted {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, pool: Arc<dyn MemoryPool>) -> Arc<Self> {
        Arc::new(Counted { inner, pool })
    }

    /// `bytes`, each holding its share of one reservation of their total.
    fn count(&self, bytes: Vec<Bytes>) -> object_store::Result<Vec<Bytes>> {
        let total = bytes.iter().map(Bytes::len).sum();
        let reservation = MemoryConsumer::new("Parquet bytes a query read").register(&self.pool);
        reservation
            .try_grow(total)
            .map_err(|e| object_store::Error::Generic {
                store: "query memory pool",
                source: Box::new(e),
            })?;
        Ok(bytes
            .into_iter()
            .map(|b| {
                let held = reservation.split(b.len());
                Bytes::from_owner(Held {
                    bytes: b,
                    _held: held,
                })
            })
            .collect())
    }
}

/// Bytes and the reservation freed with them.
struct Held {
    bytes: Bytes,
    _held: MemoryReservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (reads counted against the query pool)", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        // A whole object is streamed (its reader decides what it keeps); a
        // range, which is how Parquet is read, is fetched and counted.
        if options.range.is_none() || options.head {
            return self.inner.get_opts(location, options).await;
        }
        let got = self.inner.get_opts(location, options).await?;
        let (meta, range, attributes) =
            (got.meta.clone(), got.range.clone(), got.attributes.clone());
        let bytes = self.count(vec![got.bytes().await?])?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::iter(bytes.into_iter().map(Ok)).boxed(),
            ),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let bytes = self.inner.get_ranges(location, ranges).await?;
        self.count(bytes)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn a_read_holds_the_pool_while_any_slice_of_it_lives() {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let inner = Arc::new(InMemory::new());
        let path = Path::from("t/part.parquet");
        inner
            .put(&path, PutPayload::from(vec![7u8; 800]))
            .await
            .expect("put");
        let store = Counted::new(inner, pool.clone());

        let ranges = store
            .get_ranges(&path, &[0..100, 100..400])
            .await
            .expect("within the pool");
        assert_eq!(pool.reserved(), 400);
        let slice = ranges[1].slice(10..20);
        drop(ranges);
        assert_eq!(
            pool.reserved(),
            300,
            "the slice keeps its range, not the other"
        );

        let range = store
            .get_range(&path, 0..500)
            .await
            .expect("within the pool");
        assert_eq!(range.len(), 500);
        assert_eq!(pool.reserved(), 800);
        let refused = store.get_range(&path, 0..300).await;
        let message = refused.expect_err("over the pool").to_string();
        assert!(message.contains("Resources exhausted"), "{message}");
        assert_eq!(pool.reserved(), 800, "a refused read holds nothing");

        drop((slice, range));
        assert_eq!(pool.reserved(), 0);
        // Whole objects are streamed, not counted.
        let whole = store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!((whole.len(), pool.reserved()), (800, 0));
    }
}
