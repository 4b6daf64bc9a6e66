//! `ferrolab._core.BackupRepository`: thin bindings of `ferrolab_core::backup` (the public API is
//! `ferrolab.backup`). Arguments are converted with the GIL; the work runs detached from the interpreter;
//! progress callbacks re-attach at most about 10 times a second.

use std::path::PathBuf;
use std::sync::Mutex;

use ferrolab_core::backup::crypto::Secret;
use ferrolab_core::backup::store::S3Options;
use ferrolab_core::backup::{self as core, ProgressInfo, Repository};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::IntoPyResult;

#[pyclass(module = "ferrolab._core", name = "BackupRepository", frozen)]
pub struct BackupRepository {
    repo: Repository,
}

/// The `s3={...}` argument as `ferrolab.backup` passes it: checked there (the messages users see), with every
/// key present and None where unset; here only converted, field by field.
fn s3_options(s3: Option<Bound<'_, PyAny>>) -> PyResult<Option<S3Options>> {
    let Some(d) = s3 else { return Ok(None) };
    let (s, b) = (
        |k: &str| d.get_item(k)?.extract(),
        |k: &str| d.get_item(k)?.extract(),
    );
    Ok(Some(S3Options {
        endpoint: s("endpoint")?,
        region: s("region")?,
        access_key_id: s("access_key_id")?,
        secret_access_key: s("secret_access_key")?,
        session_token: s("session_token")?,
        allow_http: b("allow_http")?,
    }))
}

/// Runs `f` detached with a progress sink that re-attaches about 10 times a second: it checks for signals
/// (Ctrl-C cancels the operation and raises `KeyboardInterrupt`) and calls `cb` (if any) with a dict; an
/// exception from `cb` cancels the operation too and is raised.
fn with_progress<R: Send>(
    py: Python<'_>,
    cb: Option<Py<PyAny>>,
    f: impl FnOnce(Option<core::ProgressFn<'_>>) -> ferrolab_core::Result<R> + Send,
) -> PyResult<R> {
    let cb_err: Mutex<Option<PyErr>> = Mutex::new(None);
    let sink = |info: &ProgressInfo| -> bool {
        Python::attach(|py| {
            if cb_err.lock().unwrap().is_some() {
                return false;
            }
            let r = py.check_signals().and_then(|()| {
                let Some(cb) = &cb else { return Ok(()) };
                let d = dict!(py, info; phase, done_bytes, total_bytes, done_files, total_files);
                cb.call1(py, (d,))?;
                Ok(())
            });
            match r {
                Ok(()) => true,
                Err(e) => {
                    *cb_err.lock().unwrap() = Some(e);
                    false
                }
            }
        })
    };
    let r = py.detach(|| f(Some(&sink)));
    if let Some(e) = cb_err.into_inner().unwrap() {
        return Err(e);
    }
    r.py()
}

fn snapshot_dict<'py>(
    py: Python<'py>,
    s: &core::snapshot::Snapshot,
) -> PyResult<Bound<'py, PyDict>> {
    // lossless: non-UTF-8 roots come back as os.fsdecode() would give them
    use std::os::unix::ffi::OsStringExt;
    let roots: Vec<_> = s
        .root_bytes()
        .into_iter()
        .map(std::ffi::OsString::from_vec)
        .collect();
    Ok(
        dict!(py, s; id, time, paths => roots, tags, hostname, files, dirs, bytes, added_bytes, parent, duration,
        warnings),
    )
}

#[pymethods]
impl BackupRepository {
    #[staticmethod]
    #[pyo3(signature = (url, *, password=None, key_file=None, compression=3, s3=None))]
    fn init(
        py: Python<'_>,
        url: String,
        password: Option<Vec<u8>>,
        key_file: Option<Vec<u8>>,
        compression: i32,
        s3: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let s3 = s3_options(s3)?;
        let sec =
            Secret::one_of("Repository.init", password.as_deref(), key_file.as_deref()).py()?;
        let repo = py
            .detach(|| Repository::init(&url, sec, compression, s3.as_ref()))
            .py()?;
        Ok(BackupRepository { repo })
    }

    #[staticmethod]
    #[pyo3(signature = (url, *, password=None, key_file=None, s3=None))]
    fn open(
        py: Python<'_>,
        url: String,
        password: Option<Vec<u8>>,
        key_file: Option<Vec<u8>>,
        s3: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let s3 = s3_options(s3)?;
        let sec =
            Secret::one_of("Repository.open", password.as_deref(), key_file.as_deref()).py()?;
        let repo = py
            .detach(|| Repository::open(&url, sec, s3.as_ref()))
            .py()?;
        Ok(BackupRepository { repo })
    }

    #[getter]
    fn url(&self) -> String {
        self.repo.url().to_string()
    }

    #[getter]
    fn id(&self) -> String {
        self.repo.config.id.clone()
    }

    #[getter]
    fn compression(&self) -> i32 {
        self.repo.config.compression
    }

    #[pyo3(signature = (paths, *, tags=Vec::new(), exclude=Vec::new(), host=None, time=None, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn backup<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        tags: Vec<String>,
        exclude: Vec<String>,
        host: Option<String>,
        time: Option<f64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let snap = with_progress(py, progress, |p| {
            core::backup(
                &self.repo,
                &core::BackupOptions {
                    paths,
                    tags,
                    exclude,
                    host,
                    time,
                    progress: p,
                },
            )
        })?;
        snapshot_dict(py, &snap)
    }

    /// `(snapshots, damaged)`: the snapshots that can be read, and `(object name, why)` for each snapshot object
    /// that cannot be decrypted or decoded (`ferrolab.backup` reports them instead of hiding them).
    #[allow(clippy::type_complexity)]
    fn load_snapshots<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Vec<Bound<'py, PyDict>>, Vec<(String, String)>)> {
        let (snaps, bad) = py.detach(|| self.repo.load_snapshots()).py()?;
        let snaps = snaps
            .iter()
            .map(|s| snapshot_dict(py, s))
            .collect::<PyResult<Vec<_>>>()?;
        let bad = bad
            .into_iter()
            .map(|(name, err)| (name, err.to_string()))
            .collect();
        Ok((snaps, bad))
    }

    #[pyo3(signature = (snapshot_id, target, *, include=None, progress=None))]
    fn restore<'py>(
        &self,
        py: Python<'py>,
        snapshot_id: String,
        target: PathBuf,
        include: Option<Vec<PathBuf>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let include = include.as_deref().map(core::restore::include_items);
        let st = with_progress(py, progress, |p| {
            core::restore::restore(&self.repo, &snapshot_id, &target, include.as_deref(), p)
        })?;
        Ok(dict!(py, st; files, dirs, symlinks, bytes))
    }

    #[pyo3(signature = (*, read_data=true, expect_latest=None, progress=None))]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        read_data: bool,
        expect_latest: Option<String>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let rep = with_progress(py, progress, |p| {
            core::verify::verify(&self.repo, read_data, expect_latest.as_deref(), p)
        })?;
        let errors = (rep.errors.iter())
            .map(|e| Ok(dict!(py, e; item, kind, message)))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(dict!(py, rep; ok => rep.ok(), errors => errors, snapshots, packs, blobs, bytes_read))
    }

    fn forget(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<()> {
        py.detach(|| core::prune::forget(&self.repo, &ids)).py()
    }

    #[pyo3(signature = (*, progress=None))]
    fn prune<'py>(
        &self,
        py: Python<'py>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let st = with_progress(py, progress, |p| core::prune::prune(&self.repo, p))?;
        Ok(dict!(py, st; packs_deleted, packs_rewritten, blobs_removed, bytes_freed))
    }

    fn unlock(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| core::lock::remove_stale(&*self.repo.store, &self.repo.key))
            .py()
    }

    fn __repr__(&self) -> String {
        format!("BackupRepository({:?})", self.repo.url())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BackupRepository>()
}
