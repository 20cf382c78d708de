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

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
/// Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (registry, health) = (registry.clone(), health.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = route(req.uri().path(), &registry, &health);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
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
}
