//! Property test of the controller as a whole state machine: random sequences of pool,
//! Service and Namespace events, with status writes landing one at a time in any order
//! (some failing), controller restarts (a new index rebuilt from the cluster's objects
//! alone) and leader changes interleaved. After every single write, what a reader of the
//! cluster sees must hold:
//!
//! ```text
//!   1. no write puts an IP on a Service while another Service that may not share it
//!      shows it (a user's edit can make two holders incompatible; the controller must
//!      then separate them, never join them)
//!   2. an IP leaves a Service's status only when the Service's own request changed, or
//!      no pool's last valid addresses contain it any more
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::{Index, Update};
use crate::{pool, service};

const POOLS: usize = 3;
const SERVICES: usize = 6;

/// Pool specs: dual-stack, shrunk (IPv4 half, no IPv6), elsewhere, and a typo.
const POOL_SPECS: [&[&str]; 4] = [
    &["203.0.113.0/29", "2001:db8::/125"],
    &["203.0.113.0/30"],
    &["203.0.113.8/29", "2001:db8::8/125"],
    &["203.0.113.0/29", "203.0.113.999"],
];

/// What a Service asks for.
const REQUESTS: usize = 8;

#[derive(Clone, Debug)]
enum Op {
    PutPool(usize, usize),
    DeletePool(usize),
    PutService(usize, usize),
    DeleteService(usize),
    /// Every pending write lands, in an order given by the seed; some may fail.
    Write {
        seed: u64,
        fail_one_in: u64,
    },
    Restart,
    LeaderChange,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..POOLS, 0..POOL_SPECS.len()).prop_map(|(p, v)| Op::PutPool(p, v)),
        1 => (0..POOLS).prop_map(Op::DeletePool),
        4 => (0..SERVICES, 0..REQUESTS).prop_map(|(s, r)| Op::PutService(s, r)),
        1 => (0..SERVICES).prop_map(Op::DeleteService),
        5 => (any::<u64>(), prop_oneof![Just(0u64), Just(3u64)])
            .prop_map(|(seed, fail_one_in)| Op::Write { seed, fail_one_in }),
        1 => Just(Op::Restart),
        1 => Just(Op::LeaderChange),
    ]
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

fn mk_pool(i: usize, spec: usize) -> IPAddressPool {
    let mut p = IPAddressPool::new(
        &format!("p{i}"),
        IPAddressPoolSpec {
            addresses: POOL_SPECS[spec].iter().map(|s| s.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
            external_ips: None,
        },
    );
    p.metadata.creation_timestamp = Some(Time(at(i as i64 + 1)));
    p
}

fn mk_service(i: usize, request: usize) -> Service {
    let mut s = Service::default();
    s.metadata.namespace = Some("ns".into());
    s.metadata.name = Some(format!("s{i}"));
    s.metadata.creation_timestamp = Some(Time(at(100 + i as i64)));
    let (families, policy) = match request {
        1 => (vec!["IPv4", "IPv6"], "PreferDualStack"),
        _ => (vec!["IPv4"], "SingleStack"),
    };
    let port = if request == 5 { 81 } else { 80 };
    s.spec = Some(ServiceSpec {
        type_: Some("LoadBalancer".into()),
        ip_families: Some(families.into_iter().map(String::from).collect()),
        ip_family_policy: Some(policy.into()),
        ports: Some(vec![ServicePort {
            port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let annotation = match request {
        2 => Some(("ferrolb.io/loadBalancerIPs", "203.0.113.1")),
        3..=5 => Some(("ferrolb.io/allow-shared-ip", "k")),
        6 => Some(("ferrolb.io/loadBalancerIPs", "nope")),
        7 => Some(("ferrolb.io/address-pool", "p1")),
        _ => None,
    };
    s.metadata.annotations =
        annotation.map(|(k, v)| BTreeMap::from([(k.to_string(), v.to_string())]));
    s
}

/// The API server: the objects as stored, with their statuses, and a resourceVersion.
#[derive(Default)]
struct Cluster {
    pools: BTreeMap<String, IPAddressPool>,
    services: BTreeMap<String, Service>,
    /// The request variant each Service carries now.
    requests: BTreeMap<String, usize>,
    /// The request each Service carried when the controller last wrote its status.
    decided: BTreeMap<String, usize>,
    rv: u64,
}

impl Cluster {
    fn bump(&mut self) -> Option<String> {
        self.rv += 1;
        Some(self.rv.to_string())
    }
}

/// What the checker remembers: each IP a Service shows, with the request it carried
/// when the IP appeared and whether, since then, the IP has been outside every pool that
/// may hold it (by the addresses the controller could know: the last valid spec it saw,
/// or the one a pool's status records).
#[derive(Default)]
struct Seen {
    ips: BTreeMap<String, BTreeMap<IpAddr, (usize, bool)>>,
    /// The last valid spec of each pool, as a controller that saw every edit knows it.
    last_valid: BTreeMap<String, Vec<String>>,
}

fn fresh_index(c: &Cluster) -> Index {
    let mut i = Index::new(ferrolb_crds::DEFAULT_LB_CLASS);
    i.reset_pools(c.pools.values().cloned().collect());
    i.reset_services(c.services.values().cloned().collect());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("ns".into());
    i.reset_namespaces(vec![ns]);
    i.reset_advertisements(vec![]);
    i.start_leading();
    i
}

/// Checks both rules on what the cluster shows now.
fn check(c: &Cluster, seen: &mut Seen) -> Result<(), TestCaseError> {
    // 2. No IP leaves a Service without cause.
    // The pools an IP of this request may come from: the named one, else any; each by
    // the controller's memory and by its status record (a restart knows only the latter).
    let in_its_pool = |ip: IpAddr, request: usize| {
        let eligible = c
            .pools
            .iter()
            .filter(|(name, _)| request != 7 || *name == "p1");
        let mut views = [true, false].into_iter().map(|memory| {
            eligible.clone().any(|(name, p)| {
                let remembered = if memory {
                    seen.last_valid.get(name)
                } else {
                    None
                };
                pool::last_valid(p, remembered).is_some_and(|(_, addrs)| addrs.contains(ip))
            })
        });
        views.all(|held| held)
    };
    // Services showing an IP while their request differs from the one they got it under:
    // after a restart, which of two sharers changed is unknowable (nothing records the old
    // request), so a conflict between them may be resolved either way.
    let edited_holders: BTreeSet<IpAddr> = seen
        .ips
        .iter()
        .flat_map(|(name, m)| {
            m.iter()
                .filter(move |(_, (asked, _))| c.requests.get(name) != Some(asked))
                .map(|(ip, _)| *ip)
        })
        .collect();
    for (name, s) in &c.services {
        let now: BTreeSet<IpAddr> = service::status_ips(s).into_iter().collect();
        let request = c.requests[name];
        let before = seen.ips.remove(name).unwrap_or_default();
        for (ip, (asked, excused)) in &before {
            if !now.contains(ip) {
                prop_assert!(
                    *asked != request
                        || *excused
                        || edited_holders.contains(ip)
                        || !in_its_pool(*ip, request),
                    "{ip} left {name} although a pool still holds it and its request did not change"
                );
            }
        }
        let kept = now
            .into_iter()
            .map(|ip| {
                let (asked, excused) = before.get(&ip).copied().unwrap_or((request, false));
                // Excused from now on if the request changed (even if later reverted: the
                // controller may have acted on the change) or its pool let the IP go.
                let excused = excused
                    || asked != request
                    || edited_holders.contains(&ip)
                    || !in_its_pool(ip, asked);
                (ip, (asked, excused))
            })
            .collect();
        seen.ips.insert(name.clone(), kept);
    }
    seen.ips.retain(|n, _| c.services.contains_key(n));
    Ok(())
}

/// Rule 1, at the moment a write gives `name` new IPs: every other Service that shows one
/// of them must be allowed to share it with `name` (by the requests they carry now).
fn check_added(c: &Cluster, name: &str, before: &[IpAddr]) -> Result<(), TestCaseError> {
    let Some(s) = c.services.get(name) else {
        return Ok(());
    };
    let empty = BTreeMap::new();
    let share = |s: &Service| {
        service::parse(s, &empty)
            .or_else(|_| service::parse(&service::without_requests(s), &empty))
            .map(|p| p.request.share())
    };
    for ip in service::status_ips(s)
        .into_iter()
        .filter(|ip| !before.contains(ip))
    {
        for other in c
            .services
            .values()
            .filter(|o| o.metadata.name.as_deref() != Some(name))
        {
            if !service::status_ips(other).contains(&ip) {
                continue;
            }
            let ok = matches!((share(s), share(other)), (Ok(x), Ok(y)) if x.compatible(&y).is_ok());
            prop_assert!(
                ok,
                "{ip} written to {name} while {} shows it, and they may not share it",
                service::key_of(other)
            );
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut c = Cluster::default();
    let mut seen = Seen::default();
    let mut idx = fresh_index(&c);
    let mut clock = 1000;
    for op in ops {
        clock += 1;
        match op {
            Op::PutPool(i, spec) => {
                let mut p = mk_pool(i, spec);
                if let Some(old) = c.pools.get(&format!("p{i}")) {
                    p.status = old.status.clone();
                }
                p.metadata.resource_version = c.bump();
                if pool::parse(&p).is_ok() {
                    seen.last_valid
                        .insert(format!("p{i}"), p.spec.addresses.clone());
                }
                c.pools.insert(format!("p{i}"), p.clone());
                idx.apply_pool(p);
            }
            Op::DeletePool(i) => {
                seen.last_valid.remove(&format!("p{i}"));
                if c.pools.remove(&format!("p{i}")).is_some() {
                    idx.delete_pool(&format!("p{i}"));
                }
            }
            Op::PutService(i, request) => {
                let name = format!("s{i}");
                let mut s = mk_service(i, request);
                if let Some(old) = c.services.get(&name) {
                    s.status = old.status.clone();
                }
                c.requests.insert(name.clone(), request);
                s.metadata.resource_version = c.bump();
                c.services.insert(name, s.clone());
                idx.apply_service(s);
            }
            Op::DeleteService(i) => {
                c.requests.remove(&format!("s{i}"));
                c.decided.remove(&format!("s{i}"));
                if let Some(s) = c.services.remove(&format!("s{i}")) {
                    idx.delete_service(&service::key_of(&s));
                }
            }
            Op::Write { seed, fail_one_in } => {
                let mut updates = idx.reconcile(at(clock));
                // Any order, as the writer's concurrent batch lands.
                let mut rng = seed;
                let mut next = || {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    rng >> 33
                };
                for k in (1..updates.len()).rev() {
                    updates.swap(k, (next() as usize) % (k + 1));
                }
                let mut failed = BTreeSet::new();
                for u in updates {
                    if fail_one_in > 0 && next() % fail_one_in == 0 {
                        if let Update::Service { key, .. } = &u {
                            failed.insert(key.name.clone());
                        }
                        idx.write_failed(&u);
                        continue;
                    }
                    let target = match &u {
                        Update::Service { key, .. } => Some(key.name.clone()),
                        _ => None,
                    };
                    let before = target
                        .as_ref()
                        .and_then(|n| c.services.get(n))
                        .map(service::status_ips)
                        .unwrap_or_default();
                    apply_write(&mut c, &mut idx, &u);
                    if let Some(name) = &target {
                        check_added(&c, name, &before)?;
                    }
                    check(&c, &mut seen)?;
                }
                // The controller has acted on every request whose write (if any) landed.
                for (name, request) in &c.requests {
                    if !failed.contains(name) {
                        c.decided.insert(name.clone(), *request);
                    }
                }
            }
            Op::Restart => idx = fresh_index(&c),
            Op::LeaderChange => {
                idx.stop_leading();
                idx.start_leading();
            }
        }
        check(&c, &mut seen)?;
    }
    Ok(())
}

/// The writer's effect on the stored object (dropped if the object is gone), fed back to
/// the index as the watch would deliver it.
fn apply_write(c: &mut Cluster, idx: &mut Index, u: &Update) {
    match u {
        Update::Service {
            key,
            ingress,
            condition,
            ..
        } => {
            let Some(mut s) = c.services.get(&key.name).cloned() else {
                return;
            };
            let st = s.status.get_or_insert_with(Default::default);
            st.load_balancer = Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                ingress: (!ingress.is_empty()).then(|| {
                    ingress
                        .iter()
                        .map(|ip| k8s_openapi::api::core::v1::LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ..Default::default()
                        })
                        .collect()
                }),
            });
            let conds = st.conditions.clone().unwrap_or_default();
            st.conditions = Some(ferrolb_crds::condition::replace(
                &conds,
                ferrolb_crds::conditions::IP_ALLOCATED,
                condition.clone(),
            ));
            s.metadata.resource_version = c.bump();
            c.services.insert(key.name.clone(), s.clone());
            idx.apply_service(s);
        }
        Update::ServiceConditions {
            key, conditions, ..
        } => {
            let Some(mut s) = c.services.get(&key.name).cloned() else {
                return;
            };
            s.status.get_or_insert_with(Default::default).conditions = Some(conditions.clone());
            s.metadata.resource_version = c.bump();
            c.services.insert(key.name.clone(), s.clone());
            idx.apply_service(s);
        }
        Update::Pool { name, status, .. } => {
            let Some(mut p) = c.pools.get(name).cloned() else {
                return;
            };
            p.status = Some(status.clone());
            p.metadata.resource_version = c.bump();
            c.pools.insert(name.clone(), p.clone());
            idx.apply_pool(p);
        }
        Update::Advertisement { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_ip_doubles_or_moves_whatever_the_order_of_faults(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run(ops)?;
    }
}
