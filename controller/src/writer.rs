//! Applies the index's [`Update`]s to the API server (the imperative shell): status
//! patches with optimistic concurrency, retries, and Events once a write has landed.

use std::net::IpAddr;

use ferrolb_crds::{IPAddressPool, L2Advertisement, conditions};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};

use crate::index::{EventSpec, Update};
use crate::metrics::Metrics;
use ferrolb_ops::retry::{Class, classify, metric_label, with_backoff};

/// The field manager FerroLB's controller writes as.
pub const MANAGER: &str = "ferrolb-controller";

/// Writes updates and records Events.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    recorder: std::sync::Arc<Recorder>,
    metrics: Metrics,
}

/// The status patch for a Service: our ingress and our condition merged into `current`'s
/// conditions (others' conditions are kept). Carries `current`'s resourceVersion.
pub fn service_patch(current: &Service, ingress: &[IpAddr], cond: Option<&Condition>) -> Value {
    let old = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let conds = ferrolb_ops::conditions::replace(&old, conditions::IP_ALLOCATED, cond.cloned());
    let ingress: Value = if ingress.is_empty() {
        Value::Null
    } else {
        ingress
            .iter()
            .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect()
    };
    json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "status": {
            "loadBalancer": {"ingress": ingress},
            "conditions": if conds.is_empty() { Value::Null } else { json!(conds) },
        }
    })
}

impl Writer {
    /// A writer reporting Events as `ferrolb-controller` / `instance`.
    pub fn new(client: Client, instance: String, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: std::sync::Arc::new(Recorder::new(client.clone(), reporter)),
            client,
            metrics,
        }
    }

    /// Applies one update; the error means the index should retry it later.
    pub async fn apply(&self, update: &Update) -> Result<(), kube::Error> {
        let r = match update {
            Update::Service {
                key,
                resource_version,
                ingress,
                condition,
                events,
            } => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
                self.write_service(
                    &api,
                    &key.name,
                    resource_version.as_deref(),
                    ingress,
                    condition.as_ref(),
                )
                .await?;
                if let Some(svc) = api.get_opt(&key.name).await.ok().flatten() {
                    self.record(&svc.object_ref(&()), events).await;
                }
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
                let pool = with_backoff(5, || api.patch_status(name, &pp, &patch)).await?;
                self.record(&pool.object_ref(&()), events).await;
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
                let adv = with_backoff(5, || api.patch_status(name, &pp, &patch)).await?;
                self.record(&adv.object_ref(&()), events).await;
                Ok(())
            }
        };
        if let Err(e) = &r {
            self.metrics.api_error(metric_label(e));
        }
        match r {
            // The object is gone: nothing to write, and its deletion event is on the way.
            Err(e) if classify(&e) == Class::NotFound => Ok(()),
            other => other,
        }
    }

    /// Patches the Service status; on a 409 re-reads it and merges again (3 tries).
    async fn write_service(
        &self,
        api: &Api<Service>,
        name: &str,
        resource_version: Option<&str>,
        ingress: &[IpAddr],
        cond: Option<&Condition>,
    ) -> Result<(), kube::Error> {
        let params = PatchParams::default();
        let mut current: Option<Service> = None;
        for attempt in 0.. {
            let base = match current.take() {
                Some(s) => s,
                None => with_backoff(5, || api.get(name)).await?,
            };
            if attempt == 0
                && resource_version.is_some()
                && base.metadata.resource_version.as_deref() != resource_version
            {
                tracing::debug!(
                    service = name,
                    "object moved on since the decision; merging onto the latest"
                );
            }
            let patch = Patch::Merge(service_patch(&base, ingress, cond));
            match with_backoff(5, || api.patch_status(name, &params, &patch)).await {
                Ok(_) => return Ok(()),
                Err(e) if classify(&e) == Class::Conflict && attempt < 3 => {
                    self.metrics.api_error("conflict");
                    tracing::debug!(service = name, "status conflict; re-reading");
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    async fn record(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        events: &[EventSpec],
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
                action: "Allocate".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, reference).await {
                tracing::warn!(error = %e, reason = %ev.reason, "cannot record event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceStatus;
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
    fn patch_keeps_foreign_conditions_and_carries_the_version() {
        let mut svc = Service::default();
        svc.metadata.resource_version = Some("42".into());
        svc.status = Some(ServiceStatus {
            conditions: Some(vec![
                cond("example.com/Other"),
                cond(conditions::IP_ALLOCATED),
            ]),
            ..Default::default()
        });
        let ours = Condition {
            reason: "Allocated".into(),
            ..cond(conditions::IP_ALLOCATED)
        };
        let p = service_patch(&svc, &["203.0.113.1".parse().unwrap()], Some(&ours));
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(
            p["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "203.0.113.1", "ipMode": "VIP"}])
        );
        let types: Vec<_> = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].clone())
            .collect();
        assert_eq!(
            types,
            [json!("example.com/Other"), json!(conditions::IP_ALLOCATED)]
        );
        assert_eq!(p["status"]["conditions"][1]["reason"], "Allocated");
        // Releasing: ingress removed, our condition removed, theirs kept.
        let p = service_patch(&svc, &[], None);
        assert!(p["status"]["loadBalancer"]["ingress"].is_null());
        assert_eq!(p["status"]["conditions"].as_array().unwrap().len(), 1);
    }
}
