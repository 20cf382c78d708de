//! The controller's Prometheus metrics. Counters move as the controller acts; pool usage
//! gauges are computed from the index at scrape time, so they can never drift.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::index::Index;

type Labels = Vec<(String, String)>;

/// Handles to the controller's counters (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    allocations: Family<Labels, Counter>,
    api_errors: Family<Labels, Counter>,
    leader: prometheus_client::metrics::gauge::Gauge,
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
        m
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
