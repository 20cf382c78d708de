//! Applies the index's [`Update`]s to the API server (the imperative shell): status
//! patches with optimistic concurrency, retries, and Events once a write has landed.
//!
//! ```text
//!   Update ──Fence::begin──▶ Permit ──▶ for every API call: Permit::check(now) ─▶ call (deadline)
//!                 │ refused: NotLeader | Expired | Closing ──▶ Error::Fenced (retried next term)
//! ```
//!
//! Only the leader writes, fenced (docs/design/allocation.md#restarts-and-the-single-writer): an update starts only while this replica's
//! lease is valid by local time ([`crate::lease`]), and every call of it — each read, patch,
//! retry and Event — checks again right before it is sent, so a write decided before a
//! freeze (SIGSTOP) is dropped after it. A call is abandoned when the lease it was sent
//! under could be someone else's, and at [`CALL_TIMEOUT`] in any case.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::index::{EventSpec, Update};
use crate::lease::{Fence, Permit, Refused, Timing};
use crate::metrics::Metrics;
use ferrolb_controller_core::announced;
use ferrolb_ops::retry::{Class, Classify, classify, metric_label, with_backoff};

/// The field manager FerroLB's controller writes as.
pub const MANAGER: &str = "ferrolb-controller";

/// The longest wait for one API call of the writer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an update was not (fully) written; every kind is retried at a later round.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not sent: this replica may not write now (not leading, lease not renewed in time,
    /// or shutting down). Retried when it leads again.
    #[error("not written: {0}")]
    Fenced(#[from] Refused),
    /// No answer in time; the write may or may not have landed. Retried (the next round
    /// compares with what the watch shows).
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
    /// The API server's error (retryable or not: [`classify`]).
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl Error {
    /// A short label for the `ferrolb_api_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Fenced(_) => "fenced",
            Error::Timeout(_) => "timeout",
            Error::Api(e) => metric_label(e),
        }
    }
}

impl Classify for Error {
    fn class(&self) -> Class {
        match self {
            Error::Api(e) => classify(e),
            // Fenced stays fenced until a renewal; a timed-out write is not resent blindly.
            Error::Fenced(_) | Error::Timeout(_) => Class::Permanent,
        }
    }
}

/// Writes updates and records Events, only while the fence allows.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    recorder: Arc<Recorder>,
    metrics: Metrics,
    fence: Arc<Fence>,
    /// How long after the end of the tenure the lease itself lasts (lease duration − renew
    /// deadline): a call still unanswered then is abandoned.
    grace: Duration,
}

/// The status patch for a Service: our ingress, and its whole condition list (ours
/// replaced, others' as the decision saw them), on the resourceVersion the decision was
/// made on. The API server refuses it (409) if the Service changed since, or was deleted
/// and re-created: the index then decides again from the newer object, never writing a
/// stale decision onto it.
pub fn service_patch(
    resource_version: Option<&str>,
    ingress: &[IpAddr],
    conditions: &[Condition],
) -> Value {
    let ingress: Value = if ingress.is_empty() {
        Value::Null
    } else {
        ingress
            .iter()
            .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect()
    };
    json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {
            "loadBalancer": {"ingress": ingress},
            "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
        }
    })
}

/// The Events of an Announced condition write: a Normal `Announcing` on a takeover, a
/// Warning `AddressConflict` for each new conflict (docs/troubleshooting.md#address-conflicts).
fn announce_events(w: &announced::Write) -> Vec<EventSpec> {
    let takeover = w.takeover.iter().map(|note| EventSpec {
        warning: false,
        reason: "Announcing".into(),
        note: note.clone(),
    });
    let conflict = w.conflict.iter().map(|note| EventSpec {
        warning: true,
        reason: announced::ADDRESS_CONFLICT.into(),
        note: note.clone(),
    });
    takeover.chain(conflict).collect()
}

/// The reference of a Service's Events, without reading it back.
fn service_ref(key: &crate::allocator::ServiceKey, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        uid: uid.map(str::to_owned),
        ..Default::default()
    }
}

impl Writer {
    /// A writer reporting Events as `ferrolb-controller` / `instance`, writing only while
    /// `fence` allows. `client` should be bound to the same fence
    /// (`ferrolb_ops::client::fenced_client(fence.gate())`).
    pub fn new(
        client: Client,
        instance: String,
        metrics: Metrics,
        fence: Arc<Fence>,
        timing: &Timing,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Arc::new(Recorder::new(client.clone(), reporter)),
            client,
            metrics,
            fence,
            grace: timing.lease_duration.saturating_sub(timing.renew_deadline),
        }
    }

    /// One API call of an update: checked against the fence right before it is made, and
    /// abandoned at its deadline.
    async fn call<T, Fut>(&self, permit: &Permit, call: impl FnOnce() -> Fut) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let now = Instant::now();
        permit.check(now)?;
        let limit = permit
            .valid_until()
            .map_or(now, |until| until + self.grace)
            .min(now + CALL_TIMEOUT);
        // The request is built and sent only once polled, right here after the check.
        match tokio::time::timeout_at(limit, call()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Error::Timeout(limit - now)),
        }
    }

    /// Applies one update; the error means the index should retry it later.
    pub async fn apply(&self, update: &Update) -> Result<(), Error> {
        let r = self.apply_fenced(update).await;
        if let Err(e) = &r {
            self.metrics.api_error(e.metric_label());
        }
        match r {
            // The object is gone: nothing to write, and its deletion event is on the way.
            Err(Error::Api(e)) if classify(&e) == Class::NotFound => Ok(()),
            other => other,
        }
    }

    async fn apply_fenced(&self, update: &Update) -> Result<(), Error> {
        let permit = self.fence.begin(Instant::now())?;
        match update {
            Update::Service {
                key,
                resource_version,
                ingress,
                conditions,
                uid,
                events,
                ..
            } => {
                // One call per decision: no read before (the patch carries the decision's
                // resourceVersion) and none after (the Events' reference is built).
                let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
                let patch = Patch::Merge(service_patch(
                    resource_version.as_deref(),
                    ingress,
                    conditions,
                ));
                let params = PatchParams::default();
                with_backoff(5, || {
                    self.call(&permit, || api.patch_status(&key.name, &params, &patch))
                })
                .await?;
                self.record(&permit, &service_ref(key, uid.as_deref()), events)
                    .await;
                Ok(())
            }
            Update::ServiceConditions {
                key,
                resource_version,
                conditions,
                uid,
                events,
            } => {
                // Only the conditions: the Service's ingress is not ours (another class, or
                // no load balancer at all).
                let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
                let patch = Patch::Merge(json!({
                    "metadata": {"resourceVersion": resource_version},
                    "status": {
                        "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
                    }
                }));
                let params = PatchParams::default();
                with_backoff(5, || {
                    self.call(&permit, || api.patch_status(&key.name, &params, &patch))
                })
                .await?;
                self.record(&permit, &service_ref(key, uid.as_deref()), events)
                    .await;
                Ok(())
            }
            Update::Pool {
                name,
                status,
                events,
            } => {
                let api: Api<IPAddressPool> = Api::all(self.client.clone());
                let (pp, patch) = (
                    PatchParams::default(),
                    Patch::Merge(json!({"status": status})),
                );
                let pool = with_backoff(5, || {
                    self.call(&permit, || api.patch_status(name, &pp, &patch))
                })
                .await?;
                self.record(&permit, &pool.object_ref(&()), events).await;
                Ok(())
            }
            Update::Advertisement {
                name,
                status,
                events,
            } => {
                let api: Api<L2Advertisement> = Api::all(self.client.clone());
                let (pp, patch) = (
                    PatchParams::default(),
                    Patch::Merge(json!({"status": status})),
                );
                let adv = with_backoff(5, || {
                    self.call(&permit, || api.patch_status(name, &pp, &patch))
                })
                .await?;
                self.record(&permit, &adv.object_ref(&()), events).await;
                Ok(())
            }
        }
    }

    /// Writes a Service's condition list (the `ferrolb.io/Announced` condition replaced) on
    /// the resourceVersion it was decided on, then its Events ([`announce_events`]).
    pub async fn set_conditions(&self, w: &announced::Write) -> Result<(), Error> {
        let r = self.set_conditions_fenced(w).await;
        if let Err(e) = &r {
            self.metrics.api_error(e.metric_label());
        }
        match r {
            Err(Error::Api(e)) if classify(&e) == Class::NotFound => Ok(()),
            other => other,
        }
    }

    async fn set_conditions_fenced(&self, w: &announced::Write) -> Result<(), Error> {
        let permit = self.fence.begin(Instant::now())?;
        let api: Api<Service> = Api::namespaced(self.client.clone(), &w.key.namespace);
        let patch = Patch::Merge(json!({
            "metadata": {"resourceVersion": w.resource_version},
            "status": {
                "conditions": if w.conditions.is_empty() { Value::Null } else { json!(w.conditions) },
            }
        }));
        let params = PatchParams::default();
        // A 409 is not retried here: the Service changed, and the next round decides on it.
        self.call(&permit, || api.patch_status(&w.key.name, &params, &patch))
            .await?;
        let events = announce_events(w);
        if !events.is_empty() {
            self.record_as(
                &permit,
                &service_ref(&w.key, w.uid.as_deref()),
                &events,
                "Announce",
            )
            .await;
        }
        Ok(())
    }

    async fn record(
        &self,
        permit: &Permit,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        events: &[EventSpec],
    ) {
        self.record_as(permit, reference, events, "Allocate").await
    }

    async fn record_as(
        &self,
        permit: &Permit,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        events: &[EventSpec],
        action: &str,
    ) {
        for ev in events {
            let event = Event {
                type_: if ev.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: ev.reason.clone(),
                note: Some(ferrolb_ops::conditions::event_note(&ev.note)),
                action: action.into(),
                secondary: None,
            };
            let published = self
                .call(permit, || self.recorder.publish(&event, reference))
                .await;
            if let Err(e) = published {
                tracing::warn!(error = %e, reason = %ev.reason, "cannot record event");
                if matches!(e, Error::Fenced(_)) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_crds::conditions::IP_ALLOCATED;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn cond(type_: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: "R".into(),
            message: "m".into(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn patch_carries_the_decision_version_and_every_condition() {
        let conds = vec![cond("example.com/Other"), cond(IP_ALLOCATED)];
        let p = service_patch(Some("42"), &["203.0.113.1".parse().unwrap()], &conds);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(
            p["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "203.0.113.1", "ipMode": "VIP"}])
        );
        assert_eq!(p["status"]["conditions"], json!(conds));
        // Releasing the last of everything: ingress and conditions removed.
        let p = service_patch(Some("43"), &[], &[]);
        assert!(p["status"]["loadBalancer"]["ingress"].is_null());
        assert!(p["status"]["conditions"].is_null());
    }

    #[test]
    fn a_condition_write_records_a_takeover_and_a_new_conflict() {
        let mut w = announced::Write {
            key: crate::allocator::ServiceKey::new("ns", "web"),
            resource_version: Some("5".into()),
            uid: None,
            conditions: Vec::new(),
            takeover: None,
            conflict: None,
        };
        assert!(announce_events(&w).is_empty());
        w.takeover = Some("node n1 announces 203.0.113.5 on eth0 (took over)".into());
        w.conflict = Some("2001:db8::5 is in use by another host".into());
        let evs = announce_events(&w);
        let evs: Vec<(bool, &str, &str)> = evs
            .iter()
            .map(|e| (e.warning, e.reason.as_str(), e.note.as_str()))
            .collect();
        assert_eq!(
            evs,
            [
                (
                    false,
                    "Announcing",
                    "node n1 announces 203.0.113.5 on eth0 (took over)"
                ),
                (
                    true,
                    "AddressConflict",
                    "2001:db8::5 is in use by another host"
                ),
            ]
        );
    }

    #[test]
    fn events_reference_the_service_without_reading_it() {
        let key = crate::allocator::ServiceKey::new("ns", "web");
        let r = service_ref(&key, Some("u-1"));
        assert_eq!(
            (
                r.kind.as_deref(),
                r.api_version.as_deref(),
                r.uid.as_deref()
            ),
            (Some("Service"), Some("v1"), Some("u-1"))
        );
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref()),
            (Some("ns"), Some("web"))
        );
    }
}
