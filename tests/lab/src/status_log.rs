//! What a Service's status said, and when: every change of its ingress IPs or of its
//! `ferrolb.io/Announced` condition as a watch delivers it, stamped on arrival; and the
//! Events recorded for it.
//!
//! ```text
//!   StatusLog::start(lab) ── task on the api namespace's runtime: watcher(Services)
//!        │                    applied object → (ingress IPs, Announced) changed? → push
//!        └─ changes() / wait_for(svc, pred) / first_ingress(svc)      (test thread, polls)
//! ```
//! A poll only sees what a condition says when it looks; the log sees every state the API
//! server stored (a watch may fold two quick writes into one, never reorder them), so "the
//! condition never said X" is checked over the whole scene. Bounded: the task ends when the
//! log is dropped, and after [`LOG_LIMIT`] at the latest.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use ferrolb_crds::conditions::ANNOUNCED;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::lab::{Lab, ingress_ips};
use crate::objects::Svc;

/// Longest a log watches.
pub const LOG_LIMIT: Duration = Duration::from_secs(300);

/// A Service's `ferrolb.io/Announced` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason (`Announced`, `AddressConflict`, …).
    pub reason: String,
    /// What it says to a human.
    pub message: String,
}

/// One change of one Service's status, as the watch delivered it.
#[derive(Clone, Debug)]
pub struct Change {
    /// When the watch event arrived.
    pub at: Instant,
    /// `namespace/name`.
    pub service: String,
    /// Its ingress IPs then, in status order.
    pub ingress: Vec<IpAddr>,
    /// Its Announced condition then, if any.
    pub announced: Option<Announced>,
}

/// The Announced condition of a Service object, if it has one.
pub fn announced_of(s: &Service) -> Option<Announced> {
    let c = s
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ANNOUNCED)?;
    Some(Announced {
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    })
}

/// The Announced condition of `svc` now (one GET), if it has one.
pub fn announced(lab: &Lab, svc: &Svc) -> Option<Announced> {
    let s: Service = lab.get(Some(&svc.namespace), &svc.name).ok()?;
    announced_of(&s)
}

/// `namespace/name` of `svc`, as the log keys it.
pub fn key(svc: &Svc) -> String {
    format!("{}/{}", svc.namespace, svc.name)
}

/// Every Service's status changes since the log started (see the module docs).
pub struct StatusLog {
    changes: Arc<Mutex<Vec<Change>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusLog {
    /// Starts watching every Service; returns once the watch has listed them (the first
    /// entries are their states at that moment).
    pub fn start(lab: &Lab) -> Result<StatusLog> {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let (listed_tx, listed_rx) = std::sync::mpsc::channel::<()>();
        let api: Api<Service> = Api::all(lab.client());
        let log = changes.clone();
        let task = lab.spawn_in("api", async move {
            let watch = async {
                let mut last: std::collections::BTreeMap<String, (Vec<IpAddr>, Option<Announced>)> =
                    Default::default();
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    let s = match ev {
                        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                        Ok(watcher::Event::InitDone) => {
                            let _ = listed_tx.send(());
                            continue;
                        }
                        _ => continue,
                    };
                    let at = Instant::now();
                    let service = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
                    let state = (ingress_ips(&s), announced_of(&s));
                    if last.get(&service) == Some(&state) {
                        continue;
                    }
                    last.insert(service.clone(), state.clone());
                    log.lock().expect("status log").push(Change {
                        at,
                        service,
                        ingress: state.0,
                        announced: state.1,
                    });
                }
            };
            let _ = tokio::time::timeout(LOG_LIMIT, watch).await;
        });
        listed_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| anyhow::anyhow!("the Service watch did not list within 20 s"))?;
        Ok(StatusLog { changes, task })
    }

    /// Every change so far, oldest first.
    pub fn changes(&self) -> Vec<Change> {
        self.changes.lock().expect("status log").clone()
    }

    /// The changes of `svc` so far, oldest first.
    pub fn of(&self, svc: &Svc) -> Vec<Change> {
        let k = key(svc);
        self.changes()
            .into_iter()
            .filter(|c| c.service == k)
            .collect()
    }

    /// Waits up to `timeout` for a change of `svc` matching `pred` (recorded at any time,
    /// oldest first), polling every 10 ms.
    pub fn wait_for(
        &self,
        svc: &Svc,
        timeout: Duration,
        pred: impl Fn(&Change) -> bool,
    ) -> Option<Change> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.of(svc).into_iter().find(|c| pred(c)) {
                return Some(c);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// When `svc`'s status first held every IP of `ips` (the controller's write, as the
    /// watch delivered it), waiting up to `timeout`.
    pub fn ingress_written(&self, svc: &Svc, ips: &[IpAddr], timeout: Duration) -> Option<Instant> {
        self.wait_for(svc, timeout, |c| {
            ips.iter().all(|ip| c.ingress.contains(ip))
        })
        .map(|c| c.at)
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// True when the change's Announced condition has `reason`.
pub fn reason_is(c: &Change, reason: &str) -> bool {
    c.announced.as_ref().is_some_and(|a| a.reason == reason)
}

/// One Event recorded for an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// `Normal` or `Warning`.
    pub type_: String,
    /// CamelCase reason.
    pub reason: String,
    /// What it says.
    pub note: String,
}

/// The Events (events.k8s.io/v1) recorded for `svc`, oldest first.
pub fn events(lab: &Lab, svc: &Svc) -> Result<Vec<Recorded>> {
    let mut evs: Vec<Event> = lab.list(Some(&svc.namespace))?;
    evs.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&svc.name));
    evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    Ok(evs
        .into_iter()
        .map(|e| Recorded {
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
        })
        .collect())
}

/// Waits up to `timeout` for an Event of `svc` with `type_` and `reason`; returns it.
pub fn wait_event(
    lab: &Lab,
    svc: &Svc,
    type_: &str,
    reason: &str,
    timeout: Duration,
) -> Option<Recorded> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = events(lab, svc)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.type_ == type_ && e.reason == reason)
        {
            return Some(e);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
