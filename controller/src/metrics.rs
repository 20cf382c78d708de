//! The controller's Prometheus metrics. Counters move as the controller acts; pool usage
//! gauges are computed from the index at scrape time, so they can never drift. Per-Service
//! gauges (`ferrolb_service_ip`, `ferrolb_service_pending`) show what the watched Services'
//! statuses say, kept per Service as the watch delivers them and encoded at scrape time, so
//! a deleted Service's series disappear with it.
//!
//! ```text
//!   watch: Service apply/delete/reset ──▶ ServiceView { ns/name ─▶ (IPs, pending reason) }
//!                                                        │ scrape
//!                              ferrolb_service_ip{service,ip} ◀┴▶ ferrolb_service_pending{service,reason}
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use k8s_openapi::api::core::v1::Service;

use crate::allocator::ServiceKey;
use crate::index::{Index, our_condition};
use crate::service;

type Labels = Vec<(String, String)>;

/// Handles to the controller's counters (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    allocations: Family<Labels, Counter>,
    api_errors: Family<Labels, Counter>,
    leader: prometheus_client::metrics::gauge::Gauge,
    services: Arc<Mutex<ServiceView>>,
}

/// What one of our Services' status shows: its IPs, or why it has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Shown {
    ips: Vec<IpAddr>,
    /// The reason of our `IPAllocated=False` condition, when the status shows no IP.
    pending: Option<String>,
}

/// Our Services (LoadBalancer, our class or none, carrying our condition) by `ns/name`.
#[derive(Debug, Default)]
struct ServiceView {
    by_key: BTreeMap<String, Shown>,
}

impl ServiceView {
    fn apply(&mut self, lb_class: &str, svc: &Service) {
        let key = service::key_of(svc).to_string();
        match shown(lb_class, svc) {
            Some(s) => {
                self.by_key.insert(key, s);
            }
            None => {
                self.by_key.remove(&key);
            }
        }
    }
}

/// Our view of a Service, `None` when it is not ours (or not yet handled by FerroLB).
fn shown(lb_class: &str, svc: &Service) -> Option<Shown> {
    if !service::is_handled(svc, lb_class) {
        return None;
    }
    let cond = our_condition(svc)?;
    let ips = service::status_ips(svc);
    let pending = (ips.is_empty() && cond.status != "True").then(|| cond.reason.clone());
    Some(Shown { ips, pending })
}

impl Metrics {
    /// Registers the counters, and the pool gauges read from `index`, in `registry`.
    pub fn register(registry: &mut Registry, index: Arc<Mutex<Index>>) -> Self {
        let m = Self::default();
        registry.register(
            "ferrolb_allocations",
            "Allocation outcomes written to Services, by result and reason",
            m.allocations.clone(),
        );
        registry.register(
            "ferrolb_api_errors",
            "Failed API calls, by class (transient, conflict, not_found, permanent)",
            m.api_errors.clone(),
        );
        registry.register(
            "ferrolb_controller_leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        registry.register_collector(Box::new(PoolCollector { index }));
        registry.register_collector(Box::new(ServiceCollector {
            view: m.services.clone(),
        }));
        m
    }

    /// Records a watched Service's status (added or changed).
    pub fn service_changed(&self, lb_class: &str, svc: &Service) {
        self.view().apply(lb_class, svc);
    }

    /// Forgets a deleted Service.
    pub fn service_deleted(&self, key: &ServiceKey) {
        self.view().by_key.remove(&key.to_string());
    }

    /// Replaces every Service after a (re-)list.
    pub fn services_reset(&self, lb_class: &str, list: &[Service]) {
        let mut v = self.view();
        v.by_key.clear();
        for svc in list {
            v.apply(lb_class, svc);
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, ServiceView> {
        self.services.lock().expect("service view lock")
    }

    /// Counts an allocation outcome (`reason` is a condition reason such as `PoolExhausted`).
    pub fn allocation(&self, ok: bool, reason: &str) {
        let result = if ok { "allocated" } else { "failed" };
        self.allocations
            .get_or_create(&vec![
                ("result".into(), result.into()),
                ("reason".into(), reason.into()),
            ])
            .inc();
    }

    /// Counts a failed API call.
    pub fn api_error(&self, class: &str) {
        self.api_errors
            .get_or_create(&vec![("class".into(), class.into())])
            .inc();
    }

    /// Publishes leadership.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// `ferrolb_service_ip` and `ferrolb_service_pending`, from the Service view at scrape time.
#[derive(Debug)]
struct ServiceCollector {
    view: Arc<Mutex<ServiceView>>,
}

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (ips, pending): (Vec<Labels>, Vec<Labels>) = {
            let v = self.view.lock().expect("service view lock");
            let mut ips = Vec::new();
            let mut pending = Vec::new();
            for (key, s) in &v.by_key {
                for ip in &s.ips {
                    ips.push(vec![
                        ("service".into(), key.clone()),
                        ("ip".into(), ip.to_string()),
                    ]);
                }
                if let Some(reason) = &s.pending {
                    pending.push(vec![
                        ("service".into(), key.clone()),
                        ("reason".into(), reason.clone()),
                    ]);
                }
            }
            (ips, pending)
        };
        for (name, help, rows) in [
            (
                "ferrolb_service_ip",
                "1 for every IP in the status of a Service FerroLB serves, by Service and IP",
                ips,
            ),
            (
                "ferrolb_service_pending",
                "1 for every Service FerroLB serves that has no IP, with the reason of its ferrolb.io/IPAllocated condition",
                pending,
            ),
        ] {
            let probe: ConstGauge<i64> = ConstGauge::new(1);
            let mut metric = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for labels in rows {
                ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Pool size and usage per pool and family, read from the allocator at scrape time.
#[derive(Debug)]
struct PoolCollector {
    index: Arc<Mutex<Index>>,
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: Vec<(Labels, i64)> = {
            let index = self.index.lock().expect("index lock");
            let alloc = index.allocator();
            let mut rows = Vec::new();
            for name in alloc.pool_names() {
                let Some(s) = alloc.pool_stats(name) else {
                    continue;
                };
                for (family, state, n) in [
                    ("IPv4", "assigned", s.assigned_v4),
                    ("IPv4", "available", s.available_v4),
                    ("IPv6", "assigned", s.assigned_v6),
                    ("IPv6", "available", s.available_v6),
                ] {
                    let labels = vec![
                        ("pool".into(), name.to_owned()),
                        ("family".into(), family.into()),
                        ("state".into(), state.into()),
                    ];
                    rows.push((labels, i64::try_from(n).unwrap_or(i64::MAX)));
                }
            }
            rows
        };
        let family: Family<Labels, ConstGauge<i64>> = Family::default();
        let mut metric = encoder.encode_descriptor(
            "ferrolb_pool_addresses",
            "Addresses per pool, family and state (assigned, available); only the leader knows them",
            None,
            family.metric_type(),
        )?;
        for (labels, v) in rows {
            ConstGauge::new(v).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

    fn mk_service(
        name: &str,
        class: Option<&str>,
        ips: &[&str],
        cond: Option<(&str, &str)>,
    ) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_class: class.map(Into::into),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some((*ip).into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                conditions: cond.map(|(status, reason)| {
                    vec![Condition {
                        type_: ferrolb_crds::conditions::IP_ALLOCATED.into(),
                        status: status.into(),
                        reason: reason.into(),
                        message: String::new(),
                        last_transition_time: Time(Default::default()),
                        observed_generation: None,
                    }]
                }),
            }),
        }
    }

    fn lines(registry: &Registry, prefix: &str) -> Vec<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        assert!(out.contains(&format!("# TYPE {prefix} gauge")), "{out}");
        out.lines()
            .filter(|l| l.starts_with(&format!("{prefix}{{")))
            .map(str::to_owned)
            .collect()
    }

    fn setup() -> (Registry, Metrics) {
        let mut registry = Registry::default();
        let index = Arc::new(Mutex::new(Index::new("ferrolb.io/ferrolb")));
        let m = Metrics::register(&mut registry, index);
        (registry, m)
    }

    #[test]
    fn service_ip_lists_our_services_ips_and_forgets_deleted_ones() {
        let (registry, m) = setup();
        let class = "ferrolb.io/ferrolb";
        m.service_changed(
            class,
            &mk_service(
                "a",
                None,
                &["203.0.113.10", "2001:db8::10"],
                Some(("True", "Allocated")),
            ),
        );
        m.service_changed(
            class,
            &mk_service(
                "b",
                Some(class),
                &["203.0.113.11"],
                Some(("True", "Allocated")),
            ),
        );
        // Another implementation's Service, and one FerroLB has not handled yet: not ours.
        m.service_changed(
            class,
            &mk_service(
                "c",
                Some("example.com/other"),
                &["198.51.100.7"],
                Some(("True", "Allocated")),
            ),
        );
        m.service_changed(class, &mk_service("d", None, &["198.51.100.8"], None));
        assert_eq!(
            lines(&registry, "ferrolb_service_ip"),
            [
                r#"ferrolb_service_ip{service="default/a",ip="203.0.113.10"} 1"#,
                r#"ferrolb_service_ip{service="default/a",ip="2001:db8::10"} 1"#,
                r#"ferrolb_service_ip{service="default/b",ip="203.0.113.11"} 1"#,
            ]
        );
        m.service_deleted(&ServiceKey::new("default", "a"));
        assert_eq!(
            lines(&registry, "ferrolb_service_ip"),
            [r#"ferrolb_service_ip{service="default/b",ip="203.0.113.11"} 1"#]
        );
        m.services_reset(class, &[]);
        assert!(lines(&registry, "ferrolb_service_ip").is_empty());
    }

    #[test]
    fn service_pending_shows_our_services_without_an_ip_and_why() {
        let (registry, m) = setup();
        let class = "ferrolb.io/ferrolb";
        m.services_reset(
            class,
            &[
                mk_service("full", None, &[], Some(("False", "PoolExhausted"))),
                mk_service("ok", None, &["203.0.113.10"], Some(("True", "Allocated"))),
                // Keeps its IP while its request is bad: not pending, it has an address.
                mk_service(
                    "kept",
                    None,
                    &["203.0.113.11"],
                    Some(("False", "InvalidRequest")),
                ),
            ],
        );
        assert_eq!(
            lines(&registry, "ferrolb_service_pending"),
            [r#"ferrolb_service_pending{service="default/full",reason="PoolExhausted"} 1"#]
        );
        // It gets an IP: no longer pending.
        m.service_changed(
            class,
            &mk_service("full", None, &["203.0.113.12"], Some(("True", "Allocated"))),
        );
        assert!(lines(&registry, "ferrolb_service_pending").is_empty());
    }
}
