//! `kubectl ferrolb migrate --check`: would FerroLB's controller, started on the converted
//! pools, keep every IP the live Services hold? Pure.
//!
//! ```text
//!   converted pools ──▶ Allocator (controller core), loaded as the controller loads it
//!   live Services (oldest first) ──claim(status IPs)──▶ kept | in no pool | held by an older one
//!                                 ──assign_preferring──▶ same IPs?  (named pool, requested IPs,
//!                                                                    sharing, families)
//!   ──▶ one row per Service: stays / MOVES (why)
//! ```
//!
//! The controller does exactly this when it first leads (`Index::start_leading` claims, the
//! first round assigns); running the same allocator here is what makes the answer a proof
//! rather than a guess.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use ferrolb_controller_core::allocator::ServiceRequest;
use ferrolb_controller_core::service::{self, status_ips};
use ferrolb_crds::IPAddressPool;
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use crate::model::{Snapshot, allocator_for, key_of};
use crate::render::table;

/// The result of the check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckReport {
    /// One row per Service FerroLB will serve that holds an IP, oldest first.
    pub services: Vec<CheckRow>,
    /// LoadBalancer Services with IPs that FerroLB will not serve (another class).
    pub not_served: Vec<String>,
    /// No IP would move.
    pub ok: bool,
}

/// One Service's fate.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRow {
    /// `namespace/name`.
    pub service: String,
    /// The IPs in its status.
    pub ips: Vec<IpAddr>,
    /// The converted pool holding each IP (`None`: in none).
    pub pools: Vec<Option<String>>,
    /// The pool the Service names (any annotation spelling), if any.
    pub requested_pool: Option<String>,
    /// Its IPs stay.
    pub stays: bool,
    /// Why they would not, or a remark.
    pub why: String,
}

/// Runs the check of `pools` against the Services in `snap` (its pools are ignored).
pub fn check(pools: &[IPAddressPool], snap: &Snapshot) -> CheckReport {
    let mut alloc = allocator_for(pools);
    let mut order: Vec<&Service> = snap.handled_services().collect();
    order.retain(|s| !status_ips(s).is_empty());
    order.sort_by_key(|s| {
        (
            s.metadata
                .creation_timestamp
                .as_ref()
                .map_or(i64::MIN, |t| t.0.as_second()),
            key_of(s),
        )
    });

    struct Item<'a> {
        svc: &'a Service,
        request: Option<ServiceRequest>,
        invalid: Option<String>,
        problem: Option<String>,
    }
    let mut items: Vec<Item<'_>> = Vec::new();
    // Claims, as the controller's start-up does.
    for svc in order {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let labels = snap.namespace_labels(&ns);
        let (request, invalid) = match service::parse(svc, &labels) {
            Ok(p) => (Some(p.request), None),
            Err(e) => (
                service::parse(&service::without_requests(svc), &labels)
                    .ok()
                    .map(|p| p.request),
                Some(e),
            ),
        };
        let ips = status_ips(svc);
        let (keep, gone): (Vec<IpAddr>, Vec<IpAddr>) =
            ips.iter().partition(|ip| alloc.pool_of(**ip).is_some());
        let mut problem = (!gone.is_empty()).then(|| {
            format!(
                "{} is in no converted pool: FerroLB would release it",
                join(&gone)
            )
        });
        if let (Some(r), false) = (&request, keep.is_empty())
            && let Err(e) = alloc.claim(r, &keep)
        {
            problem.get_or_insert_with(|| format!("could not be kept: {e}"));
        }
        items.push(Item {
            svc,
            request,
            invalid,
            problem,
        });
    }
    // The first round: every Service's request judged against what it holds.
    let mut rows = Vec::new();
    for it in items {
        let ips = status_ips(it.svc);
        let mut why = it.problem.unwrap_or_default();
        if why.is_empty()
            && let Some(r) = &it.request
        {
            let got = if it.invalid.is_some() {
                Ok(alloc.keep(r))
            } else {
                alloc.assign_preferring(r, &ips)
            };
            match got {
                Ok(got) if same(&got, &ips) => {}
                Ok(got) => {
                    why = format!(
                        "FerroLB would give it {} instead (its request does not fit the IPs \
                         it holds)",
                        join(&got)
                    )
                }
                Err(e) => why = format!("not kept: {e}"),
            }
        }
        let stays = why.is_empty();
        if stays && let Some(e) = &it.invalid {
            why = format!("keeps its IPs, but its request is invalid: {e}");
        }
        rows.push(CheckRow {
            service: key_of(it.svc),
            pools: ips
                .iter()
                .map(|ip| alloc.pool_of(*ip).map(str::to_owned))
                .collect(),
            ips,
            requested_pool: it.request.as_ref().and_then(|r| r.requested_pool.clone()),
            stays,
            why,
        });
    }
    let not_served = snap
        .services
        .iter()
        .filter(|s| {
            s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer")
                && !service::is_handled(s, &snap.lb_class)
                && !status_ips(s).is_empty()
        })
        .map(key_of)
        .collect();
    CheckReport {
        ok: rows.iter().all(|r| r.stays),
        services: rows,
        not_served,
    }
}

fn same(a: &[IpAddr], b: &[IpAddr]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as text.
pub fn render(r: &CheckReport) -> String {
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|row| {
            let pools: Vec<String> = row
                .pools
                .iter()
                .map(|p| p.clone().unwrap_or_else(|| "(none)".into()))
                .collect();
            vec![
                row.service.clone(),
                join(&row.ips),
                pools.join(","),
                row.requested_pool.clone().unwrap_or_else(|| "-".into()),
                if row.stays {
                    if row.why.is_empty() {
                        "stays".into()
                    } else {
                        format!("stays ({})", row.why)
                    }
                } else {
                    format!("MOVES: {}", row.why)
                },
            ]
        })
        .collect();
    let mut out = table(
        &["SERVICE", "IPS", "POOL", "REQUESTED POOL", "RESULT"],
        &rows,
    );
    if !r.not_served.is_empty() {
        let _ = writeln!(
            out,
            "\nNot served by FerroLB (another loadBalancerClass; pass --lb-class if MetalLB \
             served them): {}",
            r.not_served.join(", ")
        );
    }
    let moving = r.services.iter().filter(|s| !s.stays).count();
    let _ = writeln!(
        out,
        "\n{} Service(s) keep their IPs, {moving} would move.{}",
        r.services.len() - moving,
        if moving > 0 {
            " Fix the pools before the cutover."
        } else {
            ""
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::{convert, parse_yaml};
    use crate::model::fixtures::*;

    const METALLB: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan, namespace: metallb-system}
spec:
  addresses: [203.0.113.250/29]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: gold, namespace: metallb-system}
spec:
  addresses: [203.0.113.16/28]
  serviceAllocation: {priority: 0}
"#;

    fn pools() -> Vec<IPAddressPool> {
        convert(&parse_yaml(METALLB).unwrap()).pools
    }

    fn snapshot(services: Vec<Service>) -> Snapshot {
        Snapshot {
            services,
            lb_class: ferrolb_crds::DEFAULT_LB_CLASS.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ips_inside_the_masked_pools_stay() {
        let s = snapshot(vec![
            svc("default", "a", &["203.0.113.249"]),
            annotate(
                svc("default", "b", &["203.0.113.17"]),
                "metallb.universe.tf/address-pool",
                "gold",
            ),
        ]);
        let r = check(&pools(), &s);
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.services[0].pools, [Some("lan".to_string())]);
        assert_eq!(r.services[1].requested_pool.as_deref(), Some("gold"));
        assert!(render(&r).contains("2 Service(s) keep their IPs, 0 would move."));
    }

    #[test]
    fn ips_outside_or_in_the_wrong_pool_move() {
        let s = snapshot(vec![
            svc("default", "outside", &["203.0.113.99"]),
            annotate(
                svc("default", "wrong-pool", &["203.0.113.249"]),
                "metallb.io/address-pool",
                "gold",
            ),
            svc("default", "fine", &["203.0.113.250"]),
        ]);
        let r = check(&pools(), &s);
        assert!(!r.ok);
        let by: std::collections::BTreeMap<&str, &CheckRow> =
            r.services.iter().map(|r| (r.service.as_str(), r)).collect();
        assert!(!by["default/outside"].stays);
        assert!(
            by["default/outside"].why.contains("in no converted pool"),
            "{:?}",
            by["default/outside"]
        );
        assert!(!by["default/wrong-pool"].stays);
        assert!(
            by["default/wrong-pool"].why.contains("instead"),
            "{:?}",
            by["default/wrong-pool"]
        );
        assert!(by["default/fine"].stays);
        let text = render(&r);
        assert!(text.contains("MOVES"), "{text}");
        assert!(text.contains("2 would move"), "{text}");
    }

    #[test]
    fn two_services_on_one_ip_without_sharing_key_move() {
        let s = snapshot(vec![
            svc("default", "first", &["203.0.113.250"]),
            svc("default", "second", &["203.0.113.250"]),
        ]);
        let r = check(&pools(), &s);
        assert!(!r.ok);
        assert!(
            r.services
                .iter()
                .any(|r| r.why.contains("could not be kept"))
        );
    }

    #[test]
    fn other_classes_are_listed_not_checked() {
        let mut other = svc("default", "elsewhere", &["203.0.113.99"]);
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        let r = check(&pools(), &snapshot(vec![other]));
        assert!(r.ok);
        assert_eq!(r.not_served, ["default/elsewhere"]);
    }
}
