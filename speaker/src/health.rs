//! Data-path health for `externalTrafficPolicy: Local`: is kube-proxy on this node
//! forwarding a Service's traffic to its local endpoints? kube-proxy answers that itself on
//! `GET http://<node>:<spec.healthCheckNodePort>/healthz` (200 with the local endpoint count
//! when it serves the Service here, 503 when not).
//!
//! ```text
//!   Caches::health_targets (Local, healthCheckNodePort, a serving endpoint here, not opted out)
//!        │ watch: ns/name ─▶ port          (a change probes at once, else every interval)
//!        ▼
//!   checker task: GET /healthz on the advertised address, ≤ PARALLEL at once, timeout each
//!        │ Probe per Service
//!        ▼
//!   Tracker (pure, time passed in): a failed probe ─▶ unhealthy at once;
//!                                   passes for hold_down ─▶ healthy again
//!        │ watch: unhealthy set
//!        ▼
//!   membership: Lease annotation ferrolb.io/unhealthy-services ─▶ every speaker's
//!   World::unhealthy ─▶ election (NodeExclusion::NoHealthyEndpoint)
//! ```
//!
//! Only the Tracker decides; the task is glue. A Service not yet probed counts as healthy
//! (a starting speaker does not drop every Local IP before its first round, which comes at
//! once).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Default time a failed Service's checks must pass in a row before it is healthy again.
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(3);

/// Per Service (`ns/name`), whether its health check fails on this node, from the probe
/// results fed in with their times.
#[derive(Clone, Debug)]
pub struct Tracker {
    hold_down: Duration,
    /// Failing Services → since when their checks pass (`None`: the last one failed).
    failing: BTreeMap<String, Option<Instant>>,
}

/// What one observation did to a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// It was healthy and is now unhealthy.
    Failed,
    /// It was unhealthy and passed for the whole hold-down.
    Recovered,
}

impl Tracker {
    /// A tracker whose Services recover after `hold_down` of consecutive passes.
    pub fn new(hold_down: Duration) -> Self {
        Self {
            hold_down,
            failing: BTreeMap::new(),
        }
    }

    /// Records a probe of `key` at `now`: a failure makes it unhealthy at once; a pass
    /// makes an unhealthy one healthy once its passes span `hold_down`.
    pub fn observe(&mut self, key: &str, passed: bool, now: Instant) -> Option<Transition> {
        match (self.failing.get_mut(key), passed) {
            (None, true) => None,
            (None, false) => {
                self.failing.insert(key.to_owned(), None);
                Some(Transition::Failed)
            }
            (Some(since), false) => {
                *since = None;
                None
            }
            (Some(since), true) => {
                let first = *since.get_or_insert(now);
                if now.saturating_duration_since(first) >= self.hold_down {
                    self.failing.remove(key);
                    Some(Transition::Recovered)
                } else {
                    None
                }
            }
        }
    }

    /// Forgets the Services no longer checked (no endpoint here any more, policy changed,
    /// deleted): they are unhealthy no longer.
    pub fn retain(&mut self, checked: &BTreeMap<String, u16>) {
        self.failing.retain(|k, _| checked.contains_key(k));
    }

    /// The Services whose check fails, in `ns/name` order.
    pub fn unhealthy(&self) -> BTreeSet<String> {
        self.failing.keys().cloned().collect()
    }
}

/// The result of one health-check request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The check answered this HTTP status (only 200 passes).
    Status(u16),
    /// No connection, or no HTTP status line (connection refused, reset, garbage).
    Error(String),
    /// No status line within the timeout.
    Timeout,
}

impl Probe {
    /// kube-proxy serves the Service here.
    pub fn passed(&self) -> bool {
        *self == Probe::Status(200)
    }
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 503 Service Unavailable`).
pub fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// How the checker runs.
#[derive(Clone, Debug)]
pub struct CheckerConfig {
    /// The node address kube-proxy's health checks answer on (the advertised address).
    pub address: IpAddr,
    /// Time between rounds when the checked Services do not change.
    pub interval: Duration,
    /// Longest wait for one status line.
    pub timeout: Duration,
    /// Passes in a row needed to count as healthy again.
    pub hold_down: Duration,
    /// Probes in flight at once.
    pub parallel: usize,
}

impl CheckerConfig {
    /// 1 s rounds, 500 ms per probe, [`DEFAULT_HOLD_DOWN`], 16 at once.
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            hold_down: DEFAULT_HOLD_DOWN,
            parallel: 16,
        }
    }
}

/// One `GET /healthz` to `addr`.
///
/// A minimal HTTP/1.1 request over a tokio `TcpStream` rather than hyper: hyper is in the
/// tree (through kube), but its client needs `hyper-util`'s legacy client or a hand-driven
/// connection plus `http-body-util` as new direct dependencies, for a request whose answer
/// we read only the status line of. `Connection: close`, one read loop bounded to 1 KiB.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    let request = async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ferrolb-speaker\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.lines().next().unwrap_or_default();
        parse_status(line).ok_or_else(|| std::io::Error::other("no HTTP status line"))
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(code)) => Probe::Status(code),
        Ok(Err(e)) => Probe::Error(e.to_string()),
        Err(_) => Probe::Timeout,
    }
}

/// Probes the `targets` (`ns/name` → health-check port) on `config.address` every
/// `config.interval`, and at once when they change; publishes the unhealthy set on
/// `unhealthy` (only when it changes). Ends when `targets`' sender is dropped.
pub fn spawn(
    config: CheckerConfig,
    mut targets: watch::Receiver<BTreeMap<String, u16>>,
    unhealthy: watch::Sender<BTreeSet<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tracker = Tracker::new(config.hold_down);
        loop {
            let current = targets.borrow_and_update().clone();
            let results: Vec<(String, Probe)> = futures::stream::iter(current.clone())
                .map(|(key, port)| {
                    let addr = SocketAddr::new(config.address, port);
                    async move { (key, probe(addr, config.timeout).await) }
                })
                .buffer_unordered(config.parallel.max(1))
                .collect()
                .await;
            let now = tokio::time::Instant::now().into_std();
            tracker.retain(&current);
            for (key, result) in results {
                match tracker.observe(&key, result.passed(), now) {
                    Some(Transition::Failed) => {
                        tracing::warn!(service = %key, ?result, port = current[&key],
                            "kube-proxy health check failing: not eligible for this Service")
                    }
                    Some(Transition::Recovered) => {
                        tracing::info!(service = %key, "kube-proxy health check passing again")
                    }
                    None => {}
                }
            }
            let set = tracker.unhealthy();
            unhealthy.send_if_modified(|old| std::mem::replace(old, set.clone()) != set);
            tokio::select! {
                _ = tokio::time::sleep(config.interval) => {}
                r = targets.changed() => if r.is_err() { break },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_failure_counts_at_once_and_recovery_only_after_the_hold_down() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(3));
        assert_eq!(t.observe("ns/a", true, t0), None, "healthy stays healthy");
        assert!(t.unhealthy().is_empty());
        assert_eq!(
            t.observe("ns/a", false, at(t0, 1000)),
            Some(Transition::Failed)
        );
        assert_eq!(t.unhealthy(), set(&["ns/a"]));
        // Passes from 2 s: still unhealthy at 4.9 s, healthy at 5 s.
        for ms in [2000, 3000, 4000, 4999] {
            assert_eq!(t.observe("ns/a", true, at(t0, ms)), None, "{ms}");
            assert_eq!(t.unhealthy(), set(&["ns/a"]), "{ms}");
        }
        assert_eq!(
            t.observe("ns/a", true, at(t0, 5000)),
            Some(Transition::Recovered)
        );
        assert!(t.unhealthy().is_empty());
    }

    #[test]
    fn a_failure_during_the_hold_down_starts_it_again() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(3));
        t.observe("ns/a", false, t0);
        t.observe("ns/a", true, at(t0, 1000));
        t.observe("ns/a", true, at(t0, 3000));
        assert_eq!(
            t.observe("ns/a", false, at(t0, 3500)),
            None,
            "already failing"
        );
        assert_eq!(t.observe("ns/a", true, at(t0, 4000)), None);
        assert_eq!(t.observe("ns/a", true, at(t0, 6999)), None);
        assert_eq!(t.unhealthy(), set(&["ns/a"]));
        assert_eq!(
            t.observe("ns/a", true, at(t0, 7000)),
            Some(Transition::Recovered)
        );
    }

    #[test]
    fn services_are_tracked_apart_and_forgotten_when_no_longer_checked() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::ZERO);
        t.observe("ns/b", false, t0);
        t.observe("ns/a", false, t0);
        t.observe("ns/c", true, t0);
        assert_eq!(t.unhealthy(), set(&["ns/a", "ns/b"]), "sorted");
        assert_eq!(
            t.observe("ns/a", true, t0),
            Some(Transition::Recovered),
            "no hold-down: the first pass heals"
        );
        t.retain(&BTreeMap::from([("ns/a".to_string(), 30000)]));
        assert!(t.unhealthy().is_empty(), "ns/b is no longer checked");
    }

    #[test]
    fn only_an_http_1_status_line_gives_a_status() {
        let cases = [
            ("HTTP/1.1 200 OK", Some(200)),
            ("HTTP/1.0 503 Service Unavailable", Some(503)),
            ("HTTP/1.1 200", Some(200)),
            ("HTTP/2 200", None),
            ("HTTP/1.1 20 OK", None),
            ("SSH-2.0-OpenSSH", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_status(line), want, "{line:?}");
        }
        assert!(Probe::Status(200).passed());
        assert!(!Probe::Status(503).passed() && !Probe::Timeout.passed());
    }

    /// A loopback server playing kube-proxy: answers each connection with the status in
    /// `status` at that moment (0: accept, then never answer).
    async fn kube_proxy(status: watch::Receiver<u16>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let code = *status.borrow();
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    if code == 0 {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        return;
                    }
                    let body = format!(
                        "{{\"service\":{{\"namespace\":\"ns\",\"name\":\"a\"}},\"localEndpoints\":{}}}",
                        u8::from(code == 200)
                    );
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_read_the_status_and_fail_on_refusal_and_silence() {
        let (tx, rx) = watch::channel(200);
        let addr = kube_proxy(rx).await;
        let t = Duration::from_millis(300);
        assert_eq!(probe(addr, t).await, Probe::Status(200));
        tx.send_replace(503);
        assert_eq!(probe(addr, t).await, Probe::Status(503));
        tx.send_replace(0);
        assert_eq!(probe(addr, t).await, Probe::Timeout);
        // A port nobody listens on (bound, then closed).
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(matches!(probe(closed_addr, t).await, Probe::Error(_)));
    }

    /// The next published unhealthy set (within 3 s).
    async fn next(rx: &mut watch::Receiver<BTreeSet<String>>) -> BTreeSet<String> {
        tokio::time::timeout(Duration::from_secs(3), rx.changed())
            .await
            .expect("published in time")
            .expect("checker running");
        rx.borrow_and_update().clone()
    }

    /// The task end to end, on loopback: a 503 publishes the Service unhealthy within a
    /// round, a 200 clears it only after the hold-down, and a Service no longer checked is
    /// dropped at once.
    #[tokio::test]
    async fn the_checker_publishes_failures_at_once_and_recoveries_after_the_hold_down() {
        let (status_tx, status_rx) = watch::channel(503);
        let addr = kube_proxy(status_rx).await;
        let (targets_tx, targets_rx) =
            watch::channel(BTreeMap::from([("ns/a".to_string(), addr.port())]));
        let (unhealthy_tx, mut unhealthy_rx) = watch::channel(BTreeSet::new());
        let config = CheckerConfig {
            interval: Duration::from_millis(50),
            hold_down: Duration::from_millis(400),
            ..CheckerConfig::new(addr.ip())
        };
        let task = spawn(config, targets_rx, unhealthy_tx);
        assert_eq!(next(&mut unhealthy_rx).await, set(&["ns/a"]));

        status_tx.send_replace(200);
        let healed_from = Instant::now();
        assert!(next(&mut unhealthy_rx).await.is_empty());
        assert!(
            healed_from.elapsed() >= Duration::from_millis(400),
            "hold-down"
        );

        status_tx.send_replace(503);
        assert_eq!(next(&mut unhealthy_rx).await, set(&["ns/a"]));
        targets_tx.send_replace(BTreeMap::new());
        assert!(
            next(&mut unhealthy_rx).await.is_empty(),
            "no longer checked"
        );
        drop(targets_tx);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}
