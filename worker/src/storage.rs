//! The storage edge of a task: where its master comes from and where its derivatives go, by asset.
//! [`Store`] (`object_store` locations) in production; a caller that wants the worker without the
//! bytes (the loadtest, which measures the scheduler) substitutes its own, like it substitutes the
//! [`crate::Render`] edge.

use bytes::Bytes;
use futures::future::BoxFuture;
use kiln_types::AssetGuid;

use crate::error::TaskError;
use crate::store::Store;

/// What a task reads and writes. Every method may fail per task; none stops the worker.
pub trait Storage: Send + Sync + 'static {
    /// The master's URI as manifests name it; refuses a GUID that cannot name an object.
    fn master_uri(&self, guid: &AssetGuid) -> Result<String, TaskError>;

    /// The master's size from the store's metadata (before downloading it); refused over
    /// `max_bytes`.
    fn master_size<'a>(&'a self, guid: &'a AssetGuid, max_bytes: u64) -> BoxFuture<'a, Result<u64, TaskError>>;

    /// The whole master; refused over `max_bytes`.
    fn fetch<'a>(&'a self, guid: &'a AssetGuid, max_bytes: u64) -> BoxFuture<'a, Result<Bytes, TaskError>>;

    /// Writes the derivative `file` of `guid` (overwriting: a retried task writes the same key)
    /// and returns its URI.
    fn put<'a>(&'a self, guid: &'a AssetGuid, file: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<String, TaskError>>;
}

impl Storage for Store {
    fn master_uri(&self, guid: &AssetGuid) -> Result<String, TaskError> {
        Ok(self.master_key(guid)?.uri)
    }

    fn master_size<'a>(&'a self, guid: &'a AssetGuid, max_bytes: u64) -> BoxFuture<'a, Result<u64, TaskError>> {
        Box::pin(async move { Store::master_size(self, &self.master_key(guid)?, max_bytes).await })
    }

    fn fetch<'a>(&'a self, guid: &'a AssetGuid, max_bytes: u64) -> BoxFuture<'a, Result<Bytes, TaskError>> {
        Box::pin(async move { Store::fetch(self, &self.master_key(guid)?, max_bytes).await })
    }

    fn put<'a>(&'a self, guid: &'a AssetGuid, file: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<String, TaskError>> {
        Box::pin(async move {
            let key = self.output_key(guid, file)?;
            Store::put(self, &key, bytes).await?;
            Ok(key.uri)
        })
    }
}
