//! Operational glue shared by `ferrolb-controller` and `ferrolb-speaker`: API error
//! classification and retries, the `/metrics` `/healthz` `/readyz` endpoint, and logging.
//!
//! ```text
//!   binary ──▶ init_logging(--log-format, --log-level)
//!          ──▶ serve(addr, registry, health) ── GET /metrics │ /healthz │ /readyz
//!          ──▶ retry::with_backoff(..)  (5xx, 429, transport: back off; 409: caller re-reads)
//!          ──▶ watch::watch(api, config)  (watcher: 410 re-lists at once, backoff capped at 5 s)
//!          ──▶ client::fenced_client(gate)  (a writer's client: no byte leaves once gate() is false)
//! ```

pub mod client;
pub mod conditions;
pub mod relist;
pub mod retry;
pub mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;

/// Log output format, `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The logging flags both binaries take (`#[command(flatten)]`).
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl LogArgs {
    /// Installs the global tracing subscriber as the flags say.
    pub fn init(&self) {
        init_logging(self.log_format, &self.log_level);
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` wins over `level` when set.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Liveness and readiness as the probes see them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the process ready (caches synced, responders running) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn route(path: &str, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    match path {
        "/healthz" | "/livez" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if health.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Connections served at once; more are closed at accept (a scraper and two probes need 3).
pub const MAX_CONNECTIONS: usize = 32;
/// Longest a client may take to send its request headers.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest one connection may stay open.
pub const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
/// Returns the bound address (port 0 picks one). Bounded against a hostile or broken
/// client: at most [`MAX_CONNECTIONS`] at once, [`HEADER_TIMEOUT`] to send the headers,
/// [`CONNECTION_TIMEOUT`] per connection, and accept errors (EMFILE…) back off instead
/// of spinning.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    pause = std::time::Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?pause, "metrics endpoint: accept failed; pausing");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream); // over the limit: closed at once
                continue;
            };
            let (registry, health) = (registry.clone(), health.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = route(req.uri().path(), &registry, &health);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, svc);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            });
        }
    });
    Ok((bound, task))
}

/// A kube client from the standard discovery (in-cluster, then `KUBECONFIG`/`~/.kube`).
pub async fn client() -> Result<kube::Client, kube::Error> {
    kube::Client::try_default().await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn endpoints() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry.register("ferrolb_test", "a test counter", c.clone());
        c.inc();
        let health = Health::default();
        assert_eq!(
            route("/healthz", &registry, &health).status(),
            StatusCode::OK
        );
        assert_eq!(
            route("/readyz", &registry, &health).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(
            route("/readyz", &registry, &health).status(),
            StatusCode::OK
        );
        assert_eq!(
            route("/nope", &registry, &health).status(),
            StatusCode::NOT_FOUND
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("ferrolb_test_total 1"), "{out}");
    }

    /// One GET over a fresh connection: the status line, or `None` if the server closed it.
    async fn get(addr: SocketAddr, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut out));
        read.await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.lines().next().map(str::to_owned)
    }

    #[tokio::test]
    async fn idle_connections_cannot_exhaust_the_endpoint() {
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Registry::default()),
            Arc::new(Health::default()),
        )
        .await
        .unwrap();
        assert_eq!(
            get(addr, "/healthz").await.as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        // Fill every slot with connections that never send a request.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            get(addr, "/healthz").await,
            None,
            "over the limit: closed at once"
        );
        // They are dropped after the header timeout; the endpoint serves again.
        tokio::time::sleep(HEADER_TIMEOUT + std::time::Duration::from_millis(500)).await;
        assert_eq!(
            get(addr, "/healthz").await.as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        drop(idle);
    }
}
