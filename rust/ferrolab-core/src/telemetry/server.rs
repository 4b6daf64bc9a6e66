//! The embedded HTTP server behind `fl.metrics.serve()`: `GET /metrics`, `/health`, `/ready`.
//!
//! A small HTTP/1.1 server on `std::net` with the `httparse` parser, built to be scraped safely:
//!
//! * a fixed pool of worker threads behind a bounded queue (a flood gets `503`, never unbounded threads);
//! * the request head must arrive within `header_timeout` (slow-loris clients get `408` and are dropped) and fit in
//!   `max_header_bytes` (`431` otherwise); malformed requests get `400`;
//! * only `GET` and `HEAD` (`405` otherwise); one request per connection (`Connection: close`);
//! * with a token, requests need `Authorization: Bearer <token>` (`401` otherwise), compared in constant time;
//! * [`Server::stop`] closes the listener and every open connection and joins all threads.
//!
//! What the routes answer is up to the [`Handler`] (the binding crate serves metrics natively and asks the
//! Python health registry for `/health`).

use crate::error::{CoreError, Result};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
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

    fn text(status: u16, body: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }
}

/// Answers the routes; called on worker threads, concurrently.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, route: Route) -> Reply;
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub token: Option<String>,
    pub workers: usize,
    pub queue: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 9464,
            token: None,
            workers: 4,
            queue: 64,
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Request counters of one server.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub bad_requests: AtomicU64,
    pub timeouts: AtomicU64,
    pub unauthorized: AtomicU64,
}

struct Shared {
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    counters: Counters,
}

/// A running server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds and starts serving.
    pub fn start(cfg: Config, handler: Arc<dyn Handler>) -> Result<Server> {
        if cfg.workers == 0 || cfg.queue == 0 {
            return Err(CoreError::value("serve", "workers", "must be at least 1"));
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
        let listener = TcpListener::bind(&addrs[..]).map_err(|e| CoreError::Io {
            context: format!("serve(): cannot listen on {}:{}", cfg.host, cfg.port),
            source: e,
        })?;
        let addr = listener.local_addr().map_err(|e| CoreError::Io {
            context: "serve(): local address".into(),
            source: e,
        })?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let cfg = Arc::new(cfg);
        let (tx, rx) = sync_channel::<(u64, TcpStream)>(cfg.queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(cfg.workers + 1);
        for i in 0..cfg.workers {
            let (rx, cfg, handler, shared) =
                (rx.clone(), cfg.clone(), handler.clone(), shared.clone());
            threads.push(spawn(format!("ferrolab-http-{i}"), move || {
                worker(rx, cfg, handler, shared)
            })?);
        }
        let sh = shared.clone();
        let wcfg = cfg.clone();
        threads.push(spawn("ferrolab-http-accept".into(), move || {
            accept_loop(listener, tx, sh, wcfg)
        })?);
        Ok(Server {
            addr,
            shared,
            threads,
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

    /// Stops accepting, closes open connections and joins the threads. Idempotent.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // wake the blocking accept()
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.addr.port())
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for (_, s) in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| CoreError::Io {
            context: "serve(): cannot start a server thread".into(),
            source: e,
        })
}

fn accept_loop(
    listener: TcpListener,
    tx: SyncSender<(u64, TcpStream)>,
    shared: Arc<Shared>,
    cfg: Arc<Config>,
) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else {
            // e.g. EMFILE: back off briefly instead of spinning
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(c) = stream.try_clone() {
            shared
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, c);
        }
        match tx.try_send((id, stream)) {
            Ok(()) => {}
            Err(TrySendError::Full((id, mut s))) | Err(TrySendError::Disconnected((id, mut s))) => {
                shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
                let _ = write_reply(
                    &mut s,
                    &Reply::text(503, "server busy"),
                    false,
                    &[("Retry-After", "1")],
                );
                let _ = s.shutdown(Shutdown::Both);
                forget(&shared, id);
            }
        }
        let _ = &cfg;
    }
    // dropping `tx` ends the workers once the queue is drained
}

fn forget(shared: &Shared, id: u64) {
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

fn worker(
    rx: Arc<Mutex<Receiver<(u64, TcpStream)>>>,
    cfg: Arc<Config>,
    handler: Arc<dyn Handler>,
    shared: Arc<Shared>,
) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((id, mut stream)) = next else { break };
        if !shared.stop.load(Ordering::SeqCst) {
            // a panicking handler must not take the worker down
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve_conn(&mut stream, &cfg, handler.as_ref(), &shared.counters)
            }));
            if r.is_err() {
                let _ = write_reply(&mut stream, &Reply::text(500, "internal error"), false, &[]);
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        forget(&shared, id);
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_reply(
    s: &mut TcpStream,
    r: &Reply,
    head_only: bool,
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in extra {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if !head_only {
        s.write_all(&r.body)?;
    }
    s.flush()
}

/// Reads one request head and answers it.
fn serve_conn(s: &mut TcpStream, cfg: &Config, handler: &dyn Handler, counters: &Counters) {
    let _ = s.set_write_timeout(Some(cfg.write_timeout));
    let deadline = Instant::now() + cfg.header_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (method, path, auth, body_pending) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                let mut auth = None;
                let mut clen = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("authorization") {
                        auth = Some(h.value.to_vec());
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        clen = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                    }
                }
                break (method, path, auth, clen > buf.len() - n);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                let _ = write_reply(s, &Reply::text(431, "too many headers"), false, &[]);
                return;
            }
            Err(_) => {
                counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                let _ = write_reply(s, &Reply::text(400, "malformed request"), false, &[]);
                return;
            }
        }
        if buf.len() >= cfg.max_header_bytes {
            counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            let _ = write_reply(s, &Reply::text(431, "request head too large"), false, &[]);
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            let _ = write_reply(
                s,
                &Reply::text(408, "request head not received in time"),
                false,
                &[],
            );
            return;
        }
        let _ = s.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
        let room = (cfg.max_header_bytes - buf.len()).min(chunk.len());
        match s.read(&mut chunk[..room]) {
            Ok(0) => return, // the client went away
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let _ = write_reply(
                    s,
                    &Reply::text(408, "request head not received in time"),
                    false,
                    &[],
                );
                return;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    };
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let head_only = method == "HEAD";
    let reply = if method != "GET" && method != "HEAD" {
        let _ = write_reply(
            s,
            &Reply::text(405, "only GET and HEAD are allowed"),
            false,
            &[("Allow", "GET, HEAD")],
        );
        drain(s, body_pending);
        return;
    } else if !authorized(cfg.token.as_deref(), auth.as_deref()) {
        counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        let _ = write_reply(
            s,
            &Reply::text(401, "unauthorized"),
            head_only,
            &[("WWW-Authenticate", "Bearer")],
        );
        drain(s, body_pending);
        return;
    } else {
        let p = path.split(['?', '#']).next().unwrap_or("");
        match p {
            "/metrics" => handler.handle(Route::Metrics),
            "/health" | "/healthz" => handler.handle(Route::Health),
            "/ready" | "/readyz" => handler.handle(Route::Ready),
            "/" => Reply::new(
                200,
                "text/html; charset=utf-8",
                "<html><body><h1>ferrolab</h1><ul><li><a href=\"/metrics\">/metrics</a></li>\
                 <li><a href=\"/health\">/health</a></li><li><a href=\"/ready\">/ready</a></li></ul></body></html>\n",
            ),
            _ => Reply::text(404, "not found"),
        }
    };
    let _ = write_reply(s, &reply, head_only, &[]);
    drain(s, body_pending);
}

/// Reads (and drops) what a client still sends so that closing does not reset the connection before it has
/// read the reply: at most 1 MiB and one second, so a slow sender cannot hold a worker.
fn drain(s: &mut TcpStream, pending: bool) {
    if !pending {
        return;
    }
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while total < 1 << 20 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = s.set_read_timeout(Some((deadline - now).min(Duration::from_millis(200))));
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

fn authorized(token: Option<&str>, header: Option<&[u8]>) -> bool {
    let Some(token) = token else { return true };
    let Some(h) = header else { return false };
    let h = trim(h);
    if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = trim(&h[7..]);
    // constant time in the token's content; only the length can be learnt
    let want = token.as_bytes();
    given.len() == want.len() && bool::from(given.ct_eq(want))
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

#[cfg(test)]
mod tests {
    use super::*;

    struct H;
    impl Handler for H {
        fn handle(&self, route: Route) -> Reply {
            match route {
                Route::Metrics => Reply::new(200, "text/plain", "m 1\n"),
                Route::Health => Reply::new(503, "application/json", "{\"status\":\"unhealthy\"}"),
                Route::Ready => Reply::new(200, "text/plain", "ready\n"),
            }
        }
    }

    fn request(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn start(token: Option<&str>) -> Server {
        let cfg = Config {
            port: 0,
            token: token.map(String::from),
            header_timeout: Duration::from_millis(300),
            ..Config::default()
        };
        Server::start(cfg, Arc::new(H)).unwrap()
    }

    #[test]
    fn routes_methods_and_errors() {
        let mut srv = start(None);
        let a = srv.local_addr();
        let r = request(a, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.ends_with("m 1\n"));
        assert!(request(a, b"GET /health HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503"));
        assert!(request(a, b"GET /ready?x=1 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(request(a, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(
            request(a, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
                .starts_with("HTTP/1.1 405")
        );
        assert!(request(a, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = request(a, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200") && !head.contains("m 1"));
        let mut big = b"GET /metrics HTTP/1.1\r\nX-A: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        big.extend(b"\r\n\r\n");
        assert!(request(a, &big).starts_with("HTTP/1.1 431"));
        // a client that never finishes its head gets 408 after the header timeout
        assert!(request(a, b"GET /metrics HTTP/1.1\r\n").starts_with("HTTP/1.1 408"));
        assert_eq!(srv.counters().timeouts.load(Ordering::Relaxed), 1);
        srv.stop();
        srv.stop();
        assert!(TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_err());
    }

    #[test]
    fn bearer_token() {
        let srv = start(Some("s3cret"));
        let a = srv.local_addr();
        assert!(request(a, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 401"));
        assert!(request(
            a,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n"
        )
        .starts_with("HTTP/1.1 401"));
        assert!(request(
            a,
            b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n"
        )
        .starts_with("HTTP/1.1 200"));
        assert!(request(
            a,
            b"GET /metrics HTTP/1.1\r\nauthorization: bearer  s3cret \r\n\r\n"
        )
        .starts_with("HTTP/1.1 200"));
        assert!(authorized(None, None));
        assert!(!authorized(Some("abc"), Some(b"Bearer abcd")));
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
    fn stop_closes_open_connections() {
        let mut srv = start(None);
        let a = srv.local_addr();
        let mut idle = TcpStream::connect(a).unwrap();
        idle.write_all(b"GET /met").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        srv.stop();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        // closed (EOF or reset), not hanging
        let _ = idle.read_to_end(&mut out);
    }
}
