//! `ferrolab._core.BackupRepository`: thin bindings of `ferrolab_core::backup` (the public API is
//! `ferrolab.backup`). Arguments are converted with the GIL; the work runs detached from the interpreter;
//! progress callbacks re-attach at most about 10 times a second.

use std::path::PathBuf;
use std::sync::Mutex;

use ferrolab_core::backup::crypto::Secret;
use ferrolab_core::backup::store::S3Options;
use ferrolab_core::backup::{self as core, ProgressInfo, Repository};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::IntoPyResult;

#[pyclass(module = "ferrolab._core", name = "BackupRepository", frozen)]
pub struct BackupRepository {
    repo: Repository,
}

fn secret<'a>(
    func: &str,
    password: &'a Option<Vec<u8>>,
    key_file: &'a Option<Vec<u8>>,
) -> PyResult<Secret<'a>> {
    match (password, key_file) {
        (Some(p), None) => Ok(Secret::Password(p)),
        (None, Some(k)) => Ok(Secret::KeyFile(k)),
        _ => Err(crate::errors::value_error(format!(
            "{func}(): give exactly one of 'password' and 'key_file'"
        ))),
    }
}

/// The `s3={...}` argument as `ferrolab.backup` passes it: checked there (the messages users see), with every
/// key present and None where unset; here only converted, field by field.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct S3Args {
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    allow_http: Option<bool>,
}

impl From<S3Args> for S3Options {
    fn from(a: S3Args) -> Self {
        S3Options {
            endpoint: a.endpoint,
            region: a.region,
            access_key_id: a.access_key_id,
            secret_access_key: a.secret_access_key,
            session_token: a.session_token,
            allow_http: a.allow_http,
        }
    }
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
                let d = PyDict::new(py);
                d.set_item("phase", info.phase)?;
                d.set_item("done_bytes", info.done_bytes)?;
                d.set_item("total_bytes", info.total_bytes)?;
                d.set_item("done_files", info.done_files)?;
                d.set_item("total_files", info.total_files)?;
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
    let d = PyDict::new(py);
    d.set_item("id", &s.id)?;
    d.set_item("time", s.time)?;
    // lossless: non-UTF-8 roots come back as os.fsdecode() would give them
    let roots: Vec<std::ffi::OsString> = s
        .root_bytes()
        .into_iter()
        .map(|b| {
            use std::os::unix::ffi::OsStringExt;
            std::ffi::OsString::from_vec(b)
        })
        .collect();
    d.set_item("paths", PyList::new(py, roots)?)?;
    d.set_item("tags", PyList::new(py, &s.tags)?)?;
    d.set_item("hostname", &s.hostname)?;
    d.set_item("files", s.files)?;
    d.set_item("dirs", s.dirs)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("added_bytes", s.added_bytes)?;
    d.set_item("parent", &s.parent)?;
    d.set_item("duration", s.duration)?;
    d.set_item("warnings", PyList::new(py, &s.warnings)?)?;
    Ok(d)
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
        s3: Option<S3Args>,
    ) -> PyResult<Self> {
        let s3 = s3.map(S3Options::from);
        let sec = secret("Repository.init", &password, &key_file)?;
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
        s3: Option<S3Args>,
    ) -> PyResult<Self> {
        let s3 = s3.map(S3Options::from);
        let sec = secret("Repository.open", &password, &key_file)?;
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

    fn snapshots<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let (snaps, _bad) = py.detach(|| self.repo.load_snapshots()).py()?;
        snaps.iter().map(|s| snapshot_dict(py, s)).collect()
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
        use std::os::unix::ffi::OsStrExt;
        // absolute original paths -> item paths (relative to '/', no trailing slash)
        let include: Option<Vec<Vec<u8>>> = include.map(|v| {
            v.iter()
                .map(|p| {
                    let b = p.as_os_str().as_bytes();
                    let b = b.strip_prefix(b"/").unwrap_or(b);
                    b.strip_suffix(b"/").unwrap_or(b).to_vec()
                })
                .collect()
        });
        let st = with_progress(py, progress, |p| {
            core::restore::restore(&self.repo, &snapshot_id, &target, include.as_deref(), p)
        })?;
        let d = PyDict::new(py);
        d.set_item("files", st.files)?;
        d.set_item("dirs", st.dirs)?;
        d.set_item("symlinks", st.symlinks)?;
        d.set_item("bytes", st.bytes)?;
        Ok(d)
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
        let d = PyDict::new(py);
        d.set_item("ok", rep.ok())?;
        let errs = PyList::empty(py);
        for e in &rep.errors {
            let ed = PyDict::new(py);
            ed.set_item("item", &e.item)?;
            ed.set_item("kind", e.kind)?;
            ed.set_item("message", &e.message)?;
            errs.append(ed)?;
        }
        d.set_item("errors", errs)?;
        d.set_item("snapshots", rep.snapshots)?;
        d.set_item("packs", rep.packs)?;
        d.set_item("blobs", rep.blobs)?;
        d.set_item("bytes_read", rep.bytes_read)?;
        Ok(d)
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
        let d = PyDict::new(py);
        d.set_item("packs_deleted", st.packs_deleted)?;
        d.set_item("packs_rewritten", st.packs_rewritten)?;
        d.set_item("blobs_removed", st.blobs_removed)?;
        d.set_item("bytes_freed", st.bytes_freed)?;
        Ok(d)
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
