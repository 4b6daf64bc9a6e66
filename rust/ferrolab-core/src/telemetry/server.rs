//! The embedded HTTP server behind `fl.metrics.serve()`: `GET /metrics`, `/health`, `/ready`.
//!
//! hyper's HTTP/1.1 server on a small tokio runtime of its own (two I/O threads; the [`Handler`] runs on at most
//! `workers` blocking threads, at least two), built so that no client can starve a scrape:
//!
//! * `/health` runs on at most `workers - 1` of those threads at once (further health requests wait, holding no
//!   thread), so a scrape never waits for a thread behind slow health checks;
//! * connections cost a few KiB of memory and no thread: slow or idle clients do not hold a worker;
//! * at most `max_connections` are open; at the cap a new connection closes the connection that has waited longest
//!   without a request in progress (an idle keep-alive or a client still dripping its request head), and only when
//!   every connection is busy answering is the new one refused with `503` (`Retry-After: 1`; with TLS it is
//!   closed without an answer);
//! * each request head must arrive within `header_timeout` of its first byte (`408` and close otherwise) and fit in
//!   `max_header_bytes` and 64 header lines (`431`), both counted afresh for every request of a keep-alive
//!   connection; malformed requests get `400`; a reply must be written within
//!   `write_timeout`; a keep-alive connection with no request for `idle_timeout` is closed;
//! * only `GET` and `HEAD` (`405` otherwise; request bodies are never read: the connection closes after the reply);
//! * with a token, requests need `Authorization: Bearer <token>`, compared in constant time; with `basic_auth`
//!   (user → bcrypt hash, as node_exporter's web config) `Authorization: Basic ...`; either is accepted when both
//!   are set (`401` otherwise). A bcrypt verdict is cached per distinct credential (keyed by a keyed BLAKE3 hash of
//!   user and password, looked up with constant-time comparisons), so a scrape costs one bcrypt run only the first time;
//! * optional TLS (rustls with the ring provider; TLS 1.2/1.3, ALPN `http/1.1`), the handshake bounded by
//!   `header_timeout`;
//! * `/metrics` replies are gzip-compressed when the client accepts it (Prometheus does); the route tells the
//!   handler whether the client asked for OpenMetrics and which `name[]` it asked for (prometheus_client's filter);
//! * [`Server::stop`] stops accepting, lets requests in progress finish (at most `STOP_GRACE`), closes every
//!   connection and ends the runtime's threads.
//!
//! What the routes answer is up to the [`Handler`] (the binding crate serves metrics natively and asks the
//! Python health registry for `/health`).

use crate::error::{CoreError, Result};
use crate::sync::MutexExt;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::Sleep;

/// How long [`Server::stop`] lets requests in progress finish.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Replies smaller than this are sent uncompressed.
const GZIP_MIN_BYTES: usize = 1024;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The exposition; `openmetrics` when the request's `Accept` asks for `application/openmetrics-text`;
    /// `names`: the `name[]` query parameters (URL-decoded, as prometheus_client's endpoint reads them), when
    /// any: just the samples of those names.
    Metrics {
        openmetrics: bool,
        names: Option<Vec<String>>,
    },
    Health,
    Ready,
}

/// A handler's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text reply (the body and a newline).
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    /// A JSON reply (`/health`, `/ready`).
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(status, "application/json", body)
    }

    /// `/health` when the check itself could not run: 503 while the process shuts down, else 500, with
    /// `{"status":"unhealthy","error":"<message>"}`.
    pub fn unhealthy(status: u16, error: &str) -> Reply {
        let error = serde_json::Value::String(error.to_string());
        Reply::json(
            status,
            format!("{{\"status\":\"unhealthy\",\"error\":{error}}}"),
        )
    }

    /// `/metrics`: the process-wide registry's exposition (OpenMetrics when `openmetrics`; with `only`, just the
    /// samples of those names) followed by the text of collectors outside the core that `extra` renders (empty
    /// when there are none); 500 with the message when either fails.
    pub fn metrics(
        openmetrics: bool,
        only: Option<&[String]>,
        extra: impl FnOnce() -> std::result::Result<String, String>,
    ) -> Reply {
        let (body, ctype) = if openmetrics {
            (
                super::openmetrics::exposition_only(only),
                super::openmetrics::CONTENT_TYPE,
            )
        } else {
            (
                Ok(super::metrics::registry().exposition(only)),
                super::metrics::TEXT_CONTENT_TYPE,
            )
        };
        let body = body.map_err(|e| e.to_string()).and_then(|mut text| {
            super::openmetrics::append_foreign(&mut text, &extra()?, openmetrics);
            Ok(text)
        });
        match body {
            Ok(text) => Reply::new(200, ctype, text),
            Err(e) => Reply::text(500, &e),
        }
    }
}

/// Answers the routes; called on the server's blocking threads, concurrently.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, route: Route) -> Reply;
}

/// PEM files of the certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub token: Option<String>,
    /// user → bcrypt hash (`$2b$...`); empty: no basic auth.
    pub basic_auth: Vec<(String, String)>,
    pub tls: Option<TlsFiles>,
    /// Threads that run the handler (rendering, `/health`) and bcrypt (at least two are started); `/health` uses
    /// at most `workers - 1` of them at once.
    pub workers: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub gzip: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 9464,
            token: None,
            basic_auth: Vec::new(),
            tls: None,
            workers: 4,
            max_connections: 1024,
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
            gzip: true,
        }
    }
}

/// Request counters of one server.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Connections refused with 503 (at the cap, every connection busy).
    pub rejected: AtomicU64,
    /// Connections closed at the cap to make room for a new one.
    pub evicted: AtomicU64,
    pub bad_requests: AtomicU64,
    pub timeouts: AtomicU64,
    pub unauthorized: AtomicU64,
    pub tls_errors: AtomicU64,
    pub gzipped: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

impl Counters {
    /// The counters by name (`Server.stats()` in Python).
    pub fn snapshot(&self) -> [(&'static str, u64); 9] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("requests", v(&self.requests)),
            ("rejected", v(&self.rejected)),
            ("bad_requests", v(&self.bad_requests)),
            ("timeouts", v(&self.timeouts)),
            ("unauthorized", v(&self.unauthorized)),
            ("evicted", v(&self.evicted)),
            ("tls_errors", v(&self.tls_errors)),
            ("gzipped", v(&self.gzipped)),
            ("open_connections", v(&self.open)),
        ]
    }
}

/// One connection's state, shared by its I/O wrapper, its requests and the accept loop.
struct ConnState {
    /// a request is being answered (from its head until its reply is written)
    busy: AtomicBool,
    /// replies written so far: the I/O wrapper starts the next request's head deadline and byte budget when it
    /// changes (a quick reply can come and go between two reads, never showing `busy`)
    replies: AtomicU64,
    /// milliseconds since the server started: accepted or last reply written (the eviction order)
    since: AtomicU64,
    /// close at the next chance (evicted, or the server stops)
    closing: AtomicBool,
    /// the reply was written by the I/O wrapper (408/431): the error hyper reports is not counted again
    answered: AtomicBool,
    waker: Mutex<Option<Waker>>,
    notify: Notify,
}

impl ConnState {
    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(w) = self.waker.locked().take() {
            w.wake();
        }
        self.notify.notify_one();
    }
}

struct Shared {
    cfg: Config,
    handler: Arc<dyn Handler>,
    counters: Counters,
    stop: AtomicBool,
    stop_accept: Notify,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    epoch: Instant,
    auth: Option<BasicAuth>,
    /// `/health` requests answered at once: fewer than the blocking threads, so that a scrape never waits for
    /// a thread behind slow health checks
    health_slots: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A running server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Binds and starts serving.
    pub fn start(cfg: Config, handler: Arc<dyn Handler>) -> Result<Server> {
        if cfg.workers == 0 {
            return Err(CoreError::value("serve", "workers", "must be at least 1"));
        }
        if cfg.max_connections == 0 {
            return Err(CoreError::value(
                "serve",
                "max_connections",
                "must be at least 1",
            ));
        }
        if let Some(t) = &cfg.token {
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(CoreError::value(
                    "serve",
                    "token",
                    "must be a non-empty string without whitespace",
                ));
            }
        }
        let auth = BasicAuth::new(&cfg.basic_auth)?;
        let tls = cfg.tls.as_ref().map(tls_acceptor).transpose()?;
        let addrs: Vec<SocketAddr> = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|e| {
                CoreError::value(
                    "serve",
                    "host",
                    format!("{:?} does not resolve: {e}", cfg.host),
                )
            })?
            .collect();
        let (threads, health_slots) = blocking_threads(cfg.workers);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(threads)
            .thread_name("ferrolab-http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| CoreError::io("serve(): cannot start the server runtime", e))?;
        let listener = {
            let _in_rt = rt.enter();
            bind(&addrs).map_err(|e| {
                CoreError::io(
                    format!("serve(): cannot listen on {}:{}", cfg.host, cfg.port),
                    e,
                )
            })?
        };
        let addr = listener
            .local_addr()
            .map_err(|e| CoreError::io("serve(): local address", e))?;
        let shared = Arc::new(Shared {
            cfg,
            handler,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            stop_accept: Notify::new(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            auth,
            health_slots: Arc::new(tokio::sync::Semaphore::new(health_slots)),
        });
        rt.spawn(accept_loop(listener, shared.clone(), tls));
        Ok(Server {
            addr,
            shared,
            rt: Some(rt),
        })
    }

    /// The bound address (the real port when started with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Whether [`Server::stop`] has run.
    pub fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Stops accepting, lets requests in progress finish (at most [`STOP_GRACE`]), closes every connection and
    /// ends the runtime. Idempotent; call it outside the server's runtime.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.stop_accept.notify_one();
        let conns: Vec<Arc<ConnState>> = self.shared.conns.locked().values().cloned().collect();
        for c in &conns {
            c.close();
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && !self.shared.conns.locked().is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(rt) = self.rt.take() {
            // drops what is left (the listener included); a handler still running is not waited for
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The blocking threads of a server with `workers`, and how many of them `/health` may use at once: at least one
/// is always left for `/metrics` (and `/ready`), so the pool has at least two.
fn blocking_threads(workers: usize) -> (usize, usize) {
    let threads = workers.max(2);
    (threads, threads - 1)
}

fn bind(addrs: &[SocketAddr]) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address");
    for a in addrs {
        let sock = if a.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let r = sock.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(*a)?;
            s.listen(1024)
        });
        match r {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn accept_loop(
    listener: TcpListener,
    sh: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = sh.stop_accept.notified() => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // e.g. EMFILE: back off briefly instead of spinning
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some((id, st)) = admit(&sh, &tcp, tls.is_some()) else {
            continue;
        };
        sh.counters.open.fetch_add(1, Ordering::Relaxed);
        let sh2 = sh.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _guard = ConnGuard {
                sh: sh2.clone(),
                id,
            };
            match tls {
                None => serve_io(tcp, sh2, st).await,
                Some(acc) => {
                    let hs = tokio::time::timeout(sh2.cfg.header_timeout, acc.accept(tcp));
                    let stream = tokio::select! {
                        r = hs => r,
                        _ = st.notify.notified() => return,
                    };
                    match stream {
                        Ok(Ok(s)) => serve_io(s, sh2, st).await,
                        _ => {
                            sh2.counters.tls_errors.fetch_add(1, Ordering::Relaxed);
                            trouble(Trouble::Tls);
                        }
                    }
                }
            }
        });
    }
}

/// Client trouble worth a log line (WARN, `ferrolab.server`, at most one a second per kind).
#[derive(Clone, Copy)]
enum Trouble {
    Rejected,
    BadRequest,
    Timeout,
    Unauthorized,
    Tls,
}

#[cold]
fn trouble(kind: Trouble) {
    static THROTTLES: [super::logs::Throttle; 5] = [const { super::logs::Throttle::new() }; 5];
    let Some(suppressed) = THROTTLES[kind as usize].allow(1000) else {
        return;
    };
    let what = match kind {
        Trouble::Rejected => "refused a connection: every connection is busy (503)",
        Trouble::BadRequest => "malformed request (400/431)",
        Trouble::Timeout => "client too slow: request head or reply timed out (408)",
        Trouble::Unauthorized => "request without valid credentials (401)",
        Trouble::Tls => "TLS handshake failed",
    };
    tracing::warn!(target: "ferrolab.server", similar_events_suppressed = suppressed, "{what}");
}

/// Registers a new connection, making room at the cap by closing the connection that has waited longest
/// without a request in progress; refuses it with 503 when every connection is busy (with TLS it is closed without
/// an answer: a plain-text reply before the handshake would be garbage to the client, and a handshake is what the
/// cap saves).
fn admit(sh: &Arc<Shared>, tcp: &TcpStream, tls: bool) -> Option<(u64, Arc<ConnState>)> {
    let mut conns = sh.conns.locked();
    let open = conns
        .values()
        .filter(|c| !c.closing.load(Ordering::Relaxed))
        .count();
    if open >= sh.cfg.max_connections {
        let victim = conns
            .values()
            .filter(|c| !c.busy.load(Ordering::Relaxed) && !c.closing.load(Ordering::Relaxed))
            .min_by_key(|c| c.since.load(Ordering::Relaxed));
        match victim {
            Some(v) => {
                v.close();
                sh.counters.evicted.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                drop(conns);
                sh.counters.rejected.fetch_add(1, Ordering::Relaxed);
                trouble(Trouble::Rejected);
                if tls {
                    return None;
                }
                let _ = tcp.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
                      Content-Length: 12\r\nConnection: close\r\nRetry-After: 1\r\n\r\nserver busy\n",
                );
                return None;
            }
        }
    }
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let st = Arc::new(ConnState {
        busy: AtomicBool::new(false),
        replies: AtomicU64::new(0),
        since: AtomicU64::new(sh.now_ms()),
        closing: AtomicBool::new(sh.stop.load(Ordering::SeqCst)),
        answered: AtomicBool::new(false),
        waker: Mutex::new(None),
        notify: Notify::new(),
    });
    conns.insert(id, st.clone());
    Some((id, st))
}

/// Forgets a connection when its task ends (also when the runtime drops the task).
struct ConnGuard {
    sh: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.sh.conns.locked().remove(&self.id);
        self.sh.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_io<S>(io: S, sh: Arc<Shared>, st: Arc<ConnState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let guarded = Guarded::new(io, st.clone(), sh.clone());
    let (sh2, st2) = (sh.clone(), st.clone());
    let svc = hyper::service::service_fn(move |req| respond(req, sh2.clone(), st2.clone()));
    let mut b = hyper::server::conn::http1::Builder::new();
    b.keep_alive(true)
        .header_read_timeout(None)
        .max_headers(64)
        .max_buf_size(sh.cfg.max_header_bytes.max(8192) + 8192);
    if let Err(e) = b.serve_connection(TokioIo::new(guarded), svc).await {
        if !st.answered.load(Ordering::Relaxed) && (e.is_parse() || e.is_parse_too_large()) {
            sh.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            trouble(Trouble::BadRequest);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// I/O with deadlines

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// waiting for the first byte of a request head (idle keep-alive)
    Idle,
    /// a request head has started arriving
    Head,
    /// a request is being answered
    Busy,
}

/// The connection's stream with the server's deadlines: the head deadline (answers 408 itself), the head size
/// limit (answers 431 itself), the idle keep-alive timeout, the write timeout and closing on eviction or stop.
struct Guarded<S> {
    io: S,
    st: Arc<ConnState>,
    sh: Arc<Shared>,
    phase: Phase,
    head_bytes: usize,
    /// [`ConnState::replies`] as this wrapper last saw it
    replies_seen: u64,
    deadline: Pin<Box<Sleep>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    fn new(io: S, st: Arc<ConnState>, sh: Arc<Shared>) -> Self {
        let idle = sh.cfg.idle_timeout;
        Guarded {
            io,
            st,
            sh,
            phase: Phase::Idle,
            head_bytes: 0,
            replies_seen: 0,
            deadline: Box::pin(tokio::time::sleep(idle)),
            write_deadline: None,
        }
    }

    fn reset(&mut self, after: Duration) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + after);
    }

    /// Writes a short reply straight to the stream, best effort (the connection closes right after).
    fn answer(&mut self, cx: &mut Context<'_>, status: &str, body: &str) {
        self.st.answered.store(true, Ordering::Relaxed);
        let msg = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}\n",
            body.len() + 1
        );
        let _ = Pin::new(&mut self.io).poll_write(cx, msg.as_bytes());
        let _ = Pin::new(&mut self.io).poll_flush(cx);
        let _ = Pin::new(&mut self.io).poll_shutdown(cx);
    }

    fn timed<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let t = self.sh.cfg.write_timeout;
                let d = self
                    .write_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                if d.as_mut().poll(cx).is_ready() {
                    self.sh.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    trouble(Trouble::Timeout);
                    Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        {
            let mut w = this.st.waker.locked();
            match w.as_ref() {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        // a reply was written since the last read: whatever phase this connection was seen in, the request is
        // over, and the next one gets a fresh head deadline and byte budget (a reply that returns at once, a 404
        // or a 401, is written and dropped before any read sees `busy`)
        let replies = this.st.replies.load(Ordering::SeqCst);
        if replies != this.replies_seen {
            this.replies_seen = replies;
            if this.phase != Phase::Idle {
                this.phase = Phase::Busy;
            }
        }
        let busy = this.st.busy.load(Ordering::SeqCst);
        match (this.phase, busy) {
            (Phase::Idle | Phase::Head, true) => this.phase = Phase::Busy,
            (Phase::Busy, false) => {
                this.phase = Phase::Idle;
                this.head_bytes = 0;
                this.reset(this.sh.cfg.idle_timeout);
            }
            _ => {}
        }
        if this.phase != Phase::Busy && this.st.closing.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(())); // end of stream: hyper closes the connection
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 && this.phase != Phase::Busy {
                    if this.phase == Phase::Idle {
                        this.phase = Phase::Head;
                        this.reset(this.sh.cfg.header_timeout);
                    }
                    this.head_bytes += n;
                    if this.head_bytes > this.sh.cfg.max_header_bytes {
                        buf.set_filled(before);
                        this.sh
                            .counters
                            .bad_requests
                            .fetch_add(1, Ordering::Relaxed);
                        this.answer(
                            cx,
                            "431 Request Header Fields Too Large",
                            "request head too large",
                        );
                        return Poll::Ready(Ok(()));
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if this.phase != Phase::Busy && this.deadline.as_mut().poll(cx).is_ready() {
            if this.phase == Phase::Head {
                this.sh.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                trouble(Trouble::Timeout);
                this.answer(
                    cx,
                    "408 Request Timeout",
                    "request head not received in time",
                );
            }
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, b);
        this.timed(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.timed(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.timed(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.timed(cx, r)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// requests

/// A reply body that marks its connection idle again once hyper has written (and dropped) it.
struct ReplyBody {
    data: Option<Bytes>,
    st: Arc<ConnState>,
    sh: Arc<Shared>,
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for ReplyBody {
    fn drop(&mut self) {
        self.st.since.store(self.sh.now_ms(), Ordering::Relaxed);
        self.st.replies.fetch_add(1, Ordering::SeqCst);
        self.st.busy.store(false, Ordering::SeqCst);
        // the connection may be waiting for its next head: let it see the phase change
        if let Some(w) = self.st.waker.locked().take() {
            w.wake();
        }
    }
}

fn reply_into(
    r: Reply,
    extra: &[(header::HeaderName, &'static str)],
    sh: &Arc<Shared>,
    st: &Arc<ConnState>,
) -> Response<ReplyBody> {
    let mut resp = Response::new(ReplyBody {
        data: Some(Bytes::from(r.body)),
        st: st.clone(),
        sh: sh.clone(),
    });
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in extra {
        h.insert(k.clone(), HeaderValue::from_static(v));
    }
    resp
}

async fn respond(
    req: Request<Incoming>,
    sh: Arc<Shared>,
    st: Arc<ConnState>,
) -> std::result::Result<Response<ReplyBody>, Infallible> {
    st.busy.store(true, Ordering::SeqCst);
    sh.counters.requests.fetch_add(1, Ordering::Relaxed);
    let mut extra: Vec<(header::HeaderName, &'static str)> = Vec::new();
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        // bodies are never read: close after the reply instead of reading what is left
        extra.push((header::CONNECTION, "close"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        extra.push((header::ALLOW, "GET, HEAD"));
        extra.push((header::CONNECTION, "close"));
        let r = Reply::text(405, "only GET and HEAD are allowed");
        return Ok(reply_into(r, &extra, &sh, &st));
    }
    if !authorized(&sh, req.headers().get(header::AUTHORIZATION)).await {
        sh.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        trouble(Trouble::Unauthorized);
        extra.push((
            header::WWW_AUTHENTICATE,
            if sh.auth.is_some() {
                "Basic realm=\"ferrolab\", charset=\"UTF-8\""
            } else {
                "Bearer"
            },
        ));
        return Ok(reply_into(
            Reply::text(401, "unauthorized"),
            &extra,
            &sh,
            &st,
        ));
    }
    let route = match req.uri().path() {
        "/metrics" => Some(Route::Metrics {
            openmetrics: req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .any(|v| contains_ci(v.as_bytes(), b"application/openmetrics-text")),
            names: query_names(req.uri().query()),
        }),
        "/health" | "/healthz" => Some(Route::Health),
        "/ready" | "/readyz" => Some(Route::Ready),
        _ => None,
    };
    let reply = match route {
        Some(route) => {
            let gzip = sh.cfg.gzip
                && matches!(route, Route::Metrics { .. })
                && req.method() == Method::GET
                && req
                    .headers()
                    .get_all(header::ACCEPT_ENCODING)
                    .iter()
                    .any(|v| accepts_gzip(v.as_bytes()));
            if matches!(route, Route::Metrics { .. }) {
                extra.push((header::VARY, "Accept-Encoding"));
            }
            // a health check waits for a slot (holding no thread) instead of taking the scrape's thread; the
            // slot goes with the check, so a client that leaves does not free it while the check still runs
            let slot = match route {
                Route::Health => sh.health_slots.clone().acquire_owned().await.ok(),
                _ => None,
            };
            let handler = sh.handler.clone();
            let done = tokio::task::spawn_blocking(move || {
                let r = handler.handle(route);
                drop(slot);
                if gzip && r.status == 200 && r.body.len() >= GZIP_MIN_BYTES {
                    (gzip_bytes(&r.body).map(|body| Reply { body, ..r.clone() }), r)
                } else {
                    (None, r)
                }
            })
            .await;
            match done {
                Ok((Some(z), _)) => {
                    sh.counters.gzipped.fetch_add(1, Ordering::Relaxed);
                    extra.push((header::CONTENT_ENCODING, "gzip"));
                    z
                }
                Ok((None, r)) => r,
                Err(e) => {
                    // the handler panicked
                    tracing::error!(target: "ferrolab.server", path = %req.uri().path(), error = %e, "request handler failed");
                    Reply::text(500, "internal error")
                }
            }
        }
        None if req.uri().path() == "/" => Reply::new(
            200,
            "text/html; charset=utf-8",
            "<html><body><h1>ferrolab</h1><ul><li><a href=\"/metrics\">/metrics</a></li>\
             <li><a href=\"/health\">/health</a></li><li><a href=\"/ready\">/ready</a></li></ul></body></html>\n",
        ),
        None => Reply::text(404, "not found"),
    };
    Ok(reply_into(reply, &extra, &sh, &st))
}

/// The `name[]` parameters of a query (decoded as `application/x-www-form-urlencoded`, like the `parse_qs` of
/// prometheus_client's endpoint; empty values ignored), or `None` when there are none.
fn query_names(query: Option<&str>) -> Option<Vec<String>> {
    let names: Vec<String> = form_urlencoded::parse(query?.as_bytes())
        .filter(|(k, v)| k == "name[]" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
        .collect();
    (!names.is_empty()).then_some(names)
}

/// gzip at the fastest level (the exposition compresses well even so).
pub fn gzip_bytes(data: &[u8]) -> Option<Vec<u8>> {
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 6 + 64),
        flate2::Compression::fast(),
    );
    z.write_all(data).ok()?;
    z.finish().ok()
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether an `Accept-Encoding` value accepts gzip (`gzip`, `x-gzip` or `*`, with a nonzero q).
fn accepts_gzip(v: &[u8]) -> bool {
    let Ok(v) = std::str::from_utf8(v) else {
        return false;
    };
    v.split(',').any(|item| {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        if !(name.eq_ignore_ascii_case("gzip")
            || name.eq_ignore_ascii_case("x-gzip")
            || name == "*")
        {
            return false;
        }
        parts.all(|p| {
            let p = p.trim();
            match p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                Some(q) => q.trim().parse::<f32>().is_ok_and(|q| q > 0.0),
                None => true,
            }
        })
    })
}

// ---------------------------------------------------------------------------------------------------------------
// authentication

/// Basic-auth users and their bcrypt hashes, with a cache of verdicts per credential.
struct BasicAuth {
    users: Vec<(Vec<u8>, String)>,
    key: [u8; 32],
    cache: Mutex<VecDeque<([u8; 32], bool)>>,
}

const AUTH_CACHE: usize = 256;

impl BasicAuth {
    fn new(users: &[(String, String)]) -> Result<Option<BasicAuth>> {
        if users.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(users.len());
        for (u, h) in users {
            if u.is_empty() || u.contains(':') || u.chars().any(|c| c.is_control()) {
                return Err(CoreError::value(
                    "serve",
                    "basic_auth",
                    format!("user {u:?} must be non-empty, without ':' or control characters"),
                ));
            }
            let parsed = h.parse::<bcrypt::HashParts>();
            if parsed.is_err() || !h.starts_with("$2") {
                return Err(CoreError::value(
                    "serve",
                    "basic_auth",
                    format!("the hash of user {u:?} is not a bcrypt hash ($2b$...)"),
                ));
            }
            out.push((u.as_bytes().to_vec(), h.clone()));
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| {
            CoreError::internal(
                "serve",
                format!("no randomness for the credential cache: {e}"),
            )
        })?;
        Ok(Some(BasicAuth {
            users: out,
            key,
            cache: Mutex::new(VecDeque::with_capacity(AUTH_CACHE)),
        }))
    }

    /// The cached verdict for this credential, comparing against every entry in constant time.
    fn cached(&self, id: &[u8; 32]) -> Option<bool> {
        let cache = self.cache.locked();
        let mut found = subtle::Choice::from(0);
        let mut verdict = subtle::Choice::from(0);
        for (k, v) in cache.iter() {
            let eq = k.ct_eq(id);
            found |= eq;
            verdict |= eq & subtle::Choice::from(*v as u8);
        }
        bool::from(found).then_some(bool::from(verdict))
    }

    fn remember(&self, id: [u8; 32], ok: bool) {
        let mut cache = self.cache.locked();
        if cache.len() >= AUTH_CACHE {
            cache.pop_front();
        }
        cache.push_back((id, ok));
    }

    /// bcrypt against the user's hash (an unknown user is checked against another hash, and fails).
    fn verify(&self, user: &[u8], pass: &[u8]) -> bool {
        let mut hash = &self.users[0].1;
        let mut known = subtle::Choice::from(0);
        for (u, h) in &self.users {
            let eq = u.len() == user.len() && bool::from(u.as_slice().ct_eq(user));
            if eq {
                hash = h;
                known = subtle::Choice::from(1);
            }
        }
        let ok = bcrypt::verify(pass, hash).unwrap_or(false);
        ok && bool::from(known)
    }
}

async fn authorized(sh: &Arc<Shared>, header: Option<&HeaderValue>) -> bool {
    let token = sh.cfg.token.as_deref();
    if token.is_none() && sh.auth.is_none() {
        return true;
    }
    let Some(h) = header else { return false };
    let h = trim(h.as_bytes());
    if bearer_ok(token, h) {
        return true;
    }
    let Some(auth) = &sh.auth else { return false };
    let Some((user, pass)) = basic_credentials(h) else {
        return false;
    };
    let mut hasher = blake3::Hasher::new_keyed(&auth.key);
    hasher.update(&(user.len() as u64).to_le_bytes());
    hasher.update(&user);
    hasher.update(&pass);
    let id: [u8; 32] = hasher.finalize().into();
    if let Some(v) = auth.cached(&id) {
        return v;
    }
    let sh2 = sh.clone();
    let ok = tokio::task::spawn_blocking(move || {
        sh2.auth.as_ref().is_some_and(|a| a.verify(&user, &pass))
    })
    .await
    .unwrap_or(false);
    auth.remember(id, ok);
    ok
}

fn bearer_ok(token: Option<&str>, h: &[u8]) -> bool {
    let Some(token) = token else { return false };
    if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = trim(&h[7..]);
    // constant time in the token's content; only the length can be learnt
    let want = token.as_bytes();
    given.len() == want.len() && bool::from(given.ct_eq(want))
}

/// `Basic base64(user:password)` → (user, password).
fn basic_credentials(h: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use base64::Engine;
    if h.len() < 6 || !h[..6].eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(trim(&h[6..]))
        .ok()?;
    let colon = raw.iter().position(|&c| c == b':')?;
    Some((raw[..colon].to_vec(), raw[colon + 1..].to_vec()))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

// ---------------------------------------------------------------------------------------------------------------
// TLS

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |arg: &'static str, path: &PathBuf, e: &dyn std::fmt::Display| {
        CoreError::value("serve", arg, format!("{}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("tls_cert", &files.cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("tls_cert", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad("tls_cert", &files.cert, &"no certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("tls_key", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CoreError::internal("serve", format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls_key", &files.key, &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream as StdStream;

    struct H;
    impl Handler for H {
        fn handle(&self, route: Route) -> Reply {
            match route {
                Route::Metrics { openmetrics, .. } => {
                    let mut body = format!("om {}\n", openmetrics as u8);
                    body.push_str(&"m_total 1\n".repeat(500));
                    Reply::new(200, "text/plain", body)
                }
                Route::Health => Reply::new(503, "application/json", "{\"status\":\"unhealthy\"}"),
                Route::Ready => Reply::new(200, "text/plain", "ready\n"),
            }
        }
    }

    /// Sends `raw` and reads until the server closes the connection.
    fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(addr: SocketAddr, path: &str, headers: &str) -> String {
        request(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n")
                .as_bytes(),
        )
    }

    fn start_with(f: impl FnOnce(&mut Config)) -> Server {
        let mut cfg = Config {
            port: 0,
            header_timeout: Duration::from_millis(300),
            ..Config::default()
        };
        f(&mut cfg);
        Server::start(cfg, Arc::new(H)).unwrap()
    }

    #[test]
    fn server_routes_methods_and_errors() {
        let mut srv = start_with(|_| {});
        let a = srv.local_addr();
        let r = get(a, "/metrics", "");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("om 0\n") && r.ends_with("m_total 1\n"));
        assert!(get(
            a,
            "/metrics",
            "Accept: application/openmetrics-text; version=1.0.0\r\n"
        )
        .contains("om 1\n"));
        assert!(get(a, "/health", "").starts_with("HTTP/1.1 503"));
        assert!(get(a, "/healthz", "").starts_with("HTTP/1.1 503"));
        assert!(get(a, "/ready?x=1", "").starts_with("HTTP/1.1 200"));
        assert!(get(a, "/readyz", "").starts_with("HTTP/1.1 200"));
        assert!(get(a, "/nope", "").starts_with("HTTP/1.1 404"));
        let r = request(a, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert!(
            r.starts_with("HTTP/1.1 405") && r.to_lowercase().contains("allow: get, head"),
            "{r}"
        );
        assert!(request(a, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = request(a, b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && !head.contains("m_total"),
            "{head}"
        );
        let mut big = b"GET /metrics HTTP/1.1\r\nX-A: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        big.extend(b"\r\n\r\n");
        assert!(request(a, &big).starts_with("HTTP/1.1 431"));
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert!(request(a, &many).starts_with("HTTP/1.1 431"));
        // a client that never finishes its head gets 408 after the header timeout
        assert!(request(a, b"GET /metrics HTTP/1.1\r\n").starts_with("HTTP/1.1 408"));
        assert_eq!(srv.counters().timeouts.load(Ordering::Relaxed), 1);
        assert!(srv.counters().bad_requests.load(Ordering::Relaxed) >= 3);
        srv.stop();
        srv.stop();
        assert!(StdStream::connect_timeout(&a, Duration::from_millis(500)).is_err());
    }

    #[test]
    fn server_keep_alive_and_gzip() {
        let srv = start_with(|_| {});
        let mut s = StdStream::connect(srv.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..3 {
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let r = String::from_utf8_lossy(&buf[..n]);
            assert!(
                r.starts_with("HTTP/1.1 200") && r.ends_with("ready\n"),
                "{r}"
            );
        }
        let plain = get(srv.local_addr(), "/metrics", "");
        let z = get(
            srv.local_addr(),
            "/metrics",
            "Accept-Encoding: gzip, deflate\r\n",
        );
        assert!(z.to_lowercase().contains("content-encoding: gzip"), "{z}");
        assert!(z.len() < plain.len() / 4, "{} vs {}", z.len(), plain.len());
        let no = get(
            srv.local_addr(),
            "/metrics",
            "Accept-Encoding: gzip;q=0\r\n",
        );
        assert!(!no.to_lowercase().contains("content-encoding"));
        assert!(accepts_gzip(b"br, GZIP;q=0.5") && !accepts_gzip(b"identity"));
        assert_eq!(srv.counters().gzipped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn server_bearer_token() {
        let srv = start_with(|c| c.token = Some("s3cret".into()));
        let a = srv.local_addr();
        assert!(get(a, "/metrics", "").starts_with("HTTP/1.1 401"));
        assert!(get(a, "/metrics", "Authorization: Bearer nope\r\n").starts_with("HTTP/1.1 401"));
        assert!(get(a, "/metrics", "Authorization: Bearer s3cret\r\n").starts_with("HTTP/1.1 200"));
        assert!(
            get(a, "/metrics", "authorization: bearer  s3cret \r\n").starts_with("HTTP/1.1 200")
        );
        assert!(!bearer_ok(Some("abc"), b"Bearer abcd"));
        assert!(Server::start(
            Config {
                port: 0,
                token: Some("a b".into()),
                ..Config::default()
            },
            Arc::new(H)
        )
        .is_err());
    }

    #[test]
    fn server_basic_auth_caches_verdicts() {
        use base64::Engine;
        let hash = bcrypt::hash("pw", 4).unwrap();
        let srv = start_with(|c| c.basic_auth = vec![("alice".into(), hash.clone())]);
        let a = srv.local_addr();
        let basic = |u: &str, p: &str| {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {b}\r\n")
        };
        let r = get(a, "/ready", "");
        assert!(
            r.starts_with("HTTP/1.1 401") && r.contains("Basic realm"),
            "{r}"
        );
        assert!(get(a, "/ready", &basic("alice", "pw")).starts_with("HTTP/1.1 200"));
        assert!(get(a, "/ready", &basic("alice", "pw")).starts_with("HTTP/1.1 200"));
        assert!(get(a, "/ready", &basic("alice", "no")).starts_with("HTTP/1.1 401"));
        assert!(get(a, "/ready", &basic("bob", "pw")).starts_with("HTTP/1.1 401"));
        let auth = srv.shared.auth.as_ref().unwrap();
        assert_eq!(auth.cache.lock().unwrap().len(), 3);
        assert!(Server::start(
            Config {
                port: 0,
                basic_auth: vec![("alice".into(), "plain".into())],
                ..Config::default()
            },
            Arc::new(H)
        )
        .is_err());
    }

    #[test]
    fn server_cap_closes_the_oldest_idle_connection() {
        let srv = start_with(|c| {
            c.max_connections = 4;
            c.header_timeout = Duration::from_secs(30);
        });
        let a = srv.local_addr();
        let mut idle: Vec<StdStream> = (0..4)
            .map(|_| {
                let s = StdStream::connect(a).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(srv.counters().open.load(Ordering::Relaxed), 4);
        // a fifth connection is served; the oldest idle one is closed
        assert!(get(a, "/ready", "").starts_with("HTTP/1.1 200"));
        idle[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(idle[0].read_to_end(&mut out).unwrap_or(0), 0);
        assert_eq!(srv.counters().evicted.load(Ordering::Relaxed), 1);
        idle.clear();
    }

    /// Reads one reply (head and `Content-Length` body) from a keep-alive connection.
    fn read_reply(s: &mut StdStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    return text;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn server_keep_alive_head_deadline_and_budget_are_per_request() {
        let srv = start_with(|c| c.token = Some("s3cret".into()));
        let a = srv.local_addr();
        let mut s = StdStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // replies that return at once (401, 404, the index), each followed by an idle pause longer than the
        // header timeout: the connection stays quiet and the next request gets its own answer
        let auth = "Authorization: Bearer s3cret\r\n";
        for (path, headers, want) in [
            ("/metrics", "", "HTTP/1.1 401"),
            ("/nope", auth, "HTTP/1.1 404"),
            ("/", auth, "HTTP/1.1 200"),
            ("/ready", auth, "HTTP/1.1 200"),
        ] {
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
                .unwrap();
            let r = read_reply(&mut s);
            assert!(r.starts_with(want), "{path}: {r}");
            std::thread::sleep(Duration::from_millis(600));
        }
        assert_eq!(srv.counters().timeouts.load(Ordering::Relaxed), 0);
        // header bytes do not add up across the requests of a connection
        let mut s = StdStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let pad = "x".repeat(3000);
        for i in 0..10 {
            let path = if i % 2 == 0 { "/" } else { "/nope" };
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Cookie: {pad}\r\n\r\n").as_bytes(),
            )
            .unwrap();
            let r = read_reply(&mut s);
            assert!(!r.starts_with("HTTP/1.1 431"), "request {i}: {r}");
        }
        assert_eq!(srv.counters().bad_requests.load(Ordering::Relaxed), 0);
    }

    /// `/health` blocks until released; `/metrics` answers at once.
    struct SlowHealth(Arc<(Mutex<bool>, std::sync::Condvar)>);
    impl Handler for SlowHealth {
        fn handle(&self, route: Route) -> Reply {
            if route == Route::Health {
                let (m, cv) = &*self.0;
                let mut open = m.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }
            Reply::text(200, "ok")
        }
    }

    #[test]
    fn server_scrape_does_not_wait_behind_slow_health_checks() {
        for workers in [1, 4] {
            let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
            let cfg = Config {
                port: 0,
                workers,
                ..Config::default()
            };
            let srv = Server::start(cfg, Arc::new(SlowHealth(gate.clone()))).unwrap();
            let a = srv.local_addr();
            let health: Vec<_> = (0..workers + 2)
                .map(|_| std::thread::spawn(move || get(a, "/health", "")))
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            // every health check is stuck; a scrape is still answered (old: it waited for a thread)
            let mut s = StdStream::connect(a).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let r = String::from_utf8_lossy(&out);
            assert!(r.starts_with("HTTP/1.1 200"), "workers={workers}: {r:?}");
            *gate.0.lock().unwrap() = true;
            gate.1.notify_all();
            for h in health {
                assert!(h.join().unwrap().starts_with("HTTP/1.1 200"));
            }
        }
        assert_eq!(blocking_threads(1), (2, 1));
        assert_eq!(blocking_threads(4), (4, 3));
    }

    #[test]
    fn metrics_query_names_as_prometheus_client_reads_them() {
        assert_eq!(query_names(None), None);
        assert_eq!(query_names(Some("x=1&name[]=")), None);
        assert_eq!(
            query_names(Some(
                "name[]=a_total&x=1&name%5B%5D=b%3Ac+d&name[]=%zz%e2%82%ac"
            )),
            Some(vec!["a_total".into(), "b:c d".into(), "%zz€".into()])
        );
        assert_eq!(
            query_names(Some("name[]=100%&name[]=%4")),
            Some(vec!["100%".into(), "%4".into()])
        );
    }

    #[test]
    fn server_stop_closes_open_connections() {
        let mut srv = start_with(|c| c.header_timeout = Duration::from_secs(60));
        let a = srv.local_addr();
        let mut idle = StdStream::connect(a).unwrap();
        idle.write_all(b"GET /met").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        srv.stop();
        assert!(t.elapsed() < Duration::from_secs(2));
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        // closed (EOF or reset), not hanging
        let _ = idle.read_to_end(&mut out);
        assert!(out.is_empty());
    }
}
