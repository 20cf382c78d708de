//! A stand-in for kube-proxy's per-Service health check on each lab node: the lab has no
//! kube-proxy, so this answers `GET /healthz` on a Service's `healthCheckNodePort` the way
//! kube-proxy does, and a test switches each node between its answers.
//!
//! ```text
//!   HealthChecks::start(lab, svc, port) ── one task per node namespace, [::]:port
//!        set(node, Mode::Serving)     ─▶ 200 + JSON (localEndpoints: 1)
//!        set(node, Mode::NotServing)  ─▶ 503 + JSON (localEndpoints: 0)
//!        set(node, Mode::Refused)     ─▶ listener closed: connection refused
//!   Drop: tasks aborted
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{Lab, Svc};

/// What a node's health check answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// kube-proxy serves the Service's local endpoints: 200.
    Serving,
    /// kube-proxy has no local endpoint for it: 503.
    NotServing,
    /// Nothing listens: connection refused.
    Refused,
}

/// The health-check stand-ins of one Service, one per lab node.
pub struct HealthChecks {
    modes: BTreeMap<String, watch::Sender<Mode>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HealthChecks {
    /// Answers `svc`'s health check on `port` on every node, all [`Mode::Serving`].
    pub fn start(lab: &Lab, svc: &Svc, port: u16) -> Result<HealthChecks> {
        let mut modes = BTreeMap::new();
        let mut tasks = Vec::new();
        for node in lab.nodes() {
            let (tx, rx) = watch::channel(Mode::Serving);
            // Bound here, so a port in use fails the test now rather than later.
            let listener = lab.run_in(&node.name, async move { listen(port).await })?;
            let body = |n: u8| {
                format!(
                    "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{n},\"serviceProxyHealthy\":true}}",
                    svc.namespace, svc.name
                )
            };
            let replies = (body(1), body(0));
            tasks.push(lab.spawn_in(&node.name, serve(listener, port, rx, replies)));
            modes.insert(node.name.clone(), tx);
        }
        Ok(HealthChecks { modes, tasks })
    }

    /// Switches what `node`'s health check answers (at once, for the next connection).
    pub fn set(&self, node: &str, mode: Mode) {
        self.modes
            .get(node)
            .unwrap_or_else(|| panic!("no health check on {node}"))
            .send_replace(mode);
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn listen(port: u16) -> Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .await
        .with_context(|| format!("listen on health-check port {port}"))
}

/// Serves until aborted: answers by the current mode; closes the listener while
/// [`Mode::Refused`] and binds again after.
async fn serve(
    first: TcpListener,
    port: u16,
    mut mode: watch::Receiver<Mode>,
    (ok, not_ok): (String, String),
) {
    let mut listener = Some(first);
    loop {
        let now = *mode.borrow_and_update();
        match (&listener, now) {
            (Some(_), Mode::Refused) => listener = None,
            (None, Mode::Serving | Mode::NotServing) => match listen(port).await {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ => {}
        }
        let Some(l) = &listener else {
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            r = mode.changed() => if r.is_err() { return },
            accepted = l.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let (code, body) = match *mode.borrow() {
                    Mode::Serving => ("200 OK", ok.clone()),
                    _ => ("503 Service Unavailable", not_ok.clone()),
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
                    let reply = format!(
                        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        }
    }
}
