//! Finished PDFs in an object store (`--out s3://bucket/prefix`, or `file:///dir`), through
//! the `object_store` crate (feature `s3`).
//!
//! A PDF is put to the store only after it passed the checks in a local folder: a single
//! PUT up to [`MULTIPART_FROM`] bytes, a multipart upload above (never completed, and
//! aborted, when a part fails: the store shows no object). Its SHA-256 goes with it as the
//! object's `sha256` metadata (`x-amz-meta-sha256` on S3).
//!
//! S3 credentials, region and endpoint come from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for an `http://` endpoint), as read by
//! `AmazonS3Builder::from_env`. [`Store`]'s `Debug` shows the URL only, never the keys.
//!
//! # Example
//!
//! ```no_run
//! use contentdownload::store::Store;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::from_url("s3://my-bucket/pdfs")?;
//! store.put_file("W1.pdf".as_ref(), "W1.pdf", "e3b0c442...").await?;
//! assert!(store.size("W1.pdf").await?.is_some());
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

/// Files larger than this (8 MiB) go up as a multipart upload, in parts of this size.
pub const MULTIPART_FROM: u64 = 8 << 20;

/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// The object metadata key that holds a PDF's SHA-256 (lower-case hex).
pub const SHA256_METADATA: &str = "sha256";

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `--out` URL is not a store this build knows.
    #[error("{0}")]
    Url(String),
    /// A request to the store failed (after its retries).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The local file could not be read.
    #[error("reading the finished file: {0}")]
    Io(#[from] std::io::Error),
}

/// An object store and the prefix under which finished PDFs go.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Store {
    // not the inner store's Debug: an S3 client's may show its credentials
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// The store `url` names: `s3://bucket[/prefix]` (configured from the `AWS_*`
    /// environment variables) or `file:///absolute/dir`.
    pub fn from_url(url: &str) -> Result<Store, StoreError> {
        // the S3 client's reqwest has rustls without a provider of its own: ring, as the
        // rest of the crate (the aws-lc-rs default would add a C build)
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let parsed = url::Url::parse(url).map_err(|e| StoreError::Url(format!("--out {url}: {e}")))?;
        let bad = |what: &str| StoreError::Url(format!("--out {url}: {what}"));
        let (inner, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "s3" | "s3a" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("no bucket"))?;
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    // fewer and shorter retries than the crate's (10 over 3 minutes): a work
                    // whose upload fails is retried by the next run
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(60),
                    })
                    .build()?;
                let prefix = ObjectPath::from_url_path(parsed.path()).map_err(|e| bad(&e.to_string()))?;
                (Arc::new(s3), prefix)
            }
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| bad("not an absolute local path"))?;
                std::fs::create_dir_all(&dir)?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                (Arc::new(fs), ObjectPath::default())
            }
            other => return Err(bad(&format!("unknown scheme {other}:// (s3:// or file://)"))),
        };
        Ok(Store {
            inner,
            prefix,
            url: crate::ledger::redact_url(url),
        })
    }

    /// The store's URL (its password, if any, redacted).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    /// Puts the local file `from` as `<prefix>/<name>`, its `sha256` metadata set; returns
    /// once the store acknowledged the whole object. A failed multipart upload is aborted.
    pub async fn put_file(&self, from: &Path, name: &str, sha256: &str) -> Result<(), StoreError> {
        let location = self.path(name);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata(SHA256_METADATA.into()), sha256.to_owned().into());
        attributes.insert(Attribute::ContentType, "application/pdf".into());
        let mut file = tokio::fs::File::open(from).await?;
        let size = file.metadata().await?.len();
        if size <= MULTIPART_FROM {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).await?;
            let opts = PutOptions {
                attributes,
                ..Default::default()
            };
            self.inner.put_opts(&location, PutPayload::from(data), opts).await?;
            return Ok(());
        }
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = self.inner.put_multipart_opts(&location, opts).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_FROM as usize);
        let mut buf = vec![0u8; 1 << 20];
        let sent: Result<(), StoreError> = async {
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => {
                writer.finish().await?;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(store = %self.url, "could not abort a failed multipart upload of {name}: {abort}");
                }
                Err(e)
            }
        }
    }

    /// The size of `<prefix>/<name>`, `None` when there is no such object.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
