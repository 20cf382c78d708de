//! `spec.externalIPs` through the index: what is written, to whom, and when it is judged
//! again.

use super::tests::{key, leading, mk_pool, mk_service, t};
use super::*;
use ferrolb_crds::PoolExternalIPs;
use k8s_openapi::api::core::v1::ServiceStatus;

/// Pool `lb` (203.0.113.0/30, ordinary) and pool `ext` (198.51.100.0/28, reserved for the
/// externalIPs of namespace `ns`).
fn pools() -> Vec<IPAddressPool> {
    let mut ext = mk_pool("ext", &["198.51.100.0/28"]);
    ext.spec.external_ips = Some(PoolExternalIPs {
        namespaces: vec!["ns".into()],
    });
    vec![mk_pool("lb", &["203.0.113.0/30"]), ext]
}

fn with_external(mut s: Service, type_: &str, ips: &[&str]) -> Service {
    let spec = s.spec.as_mut().unwrap();
    spec.type_ = Some(type_.into());
    spec.external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
    s
}

fn with_ingress(mut s: Service, ips: &[&str]) -> Service {
    let st = s.status.get_or_insert_with(ServiceStatus::default);
    st.load_balancer = Some(service::lb_status(ips));
    s
}

/// Applies every Service write of a round as the API server would (a new resourceVersion,
/// the written conditions, and the ingress for full updates) until nothing is left to
/// write; returns every write made, in order.
fn settle(i: &mut Index, now: i64) -> Vec<Update> {
    let mut all = Vec::new();
    for round in 0..10 {
        let us: Vec<Update> = i
            .reconcile(t(now + round))
            .into_iter()
            .filter(|u| matches!(u, Update::Service { .. } | Update::ServiceConditions { .. }))
            .collect();
        if us.is_empty() {
            break;
        }
        for u in &us {
            let (key, conds, ingress) = match u {
                Update::Service {
                    key,
                    conditions,
                    ingress,
                    ..
                } => (key, conditions, Some(ingress)),
                Update::ServiceConditions {
                    key, conditions, ..
                } => (key, conditions, None),
                _ => unreachable!(),
            };
            let mut s = i.services[key].clone();
            s.metadata.resource_version = Some(format!("{}", 100 + now + round));
            if let Some(ips) = ingress {
                let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
                s = with_ingress(s, &ips);
            }
            s.status
                .get_or_insert_with(ServiceStatus::default)
                .conditions = Some(conds.clone());
            i.apply_service(s);
        }
        all.extend(us);
    }
    all
}

fn ext_condition(i: &Index, name: &str) -> Option<Condition> {
    external::observed(&i.services[&key(name)]).cloned()
}

fn writes_to<'a>(us: &'a [Update], name: &str) -> Vec<&'a Update> {
    us.iter()
        .filter(|u| match u {
            Update::Service { key, .. } | Update::ServiceConditions { key, .. } => key.name == name,
            _ => false,
        })
        .collect()
}

#[test]
fn a_cluster_ip_service_gets_only_a_condition_and_one_event() {
    let web = with_external(mk_service("web", 1), "ClusterIP", &["198.51.100.1"]);
    let mut i = leading(pools(), vec![web]);
    let us = settle(&mut i, 10);
    let ws = writes_to(&us, "web");
    assert_eq!(ws.len(), 1, "{us:#?}");
    let Update::ServiceConditions { events, .. } = ws[0] else {
        panic!("a ClusterIP Service's ingress is not ours: {:?}", ws[0]);
    };
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].warning, events[0].reason.as_str()),
        (false, "ExternalIPsAccepted")
    );
    let c = ext_condition(&i, "web").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Accepted"));
    assert_eq!(c.message, "announcing 198.51.100.1 from IPAddressPool ext");
    assert!(our_condition(&i.services[&key("web")]).is_none());
    // A resync writes nothing.
    let all: Vec<Service> = i.services.values().cloned().collect();
    i.reset_services(all);
    assert!(settle(&mut i, 30).is_empty());
}

#[test]
fn a_marked_pool_allocates_nothing_to_load_balancers() {
    let only_ext = vec![pools().remove(1)];
    let mut named = mk_service("named", 2);
    named.metadata.annotations = Some(BTreeMap::from([(
        ferrolb_crds::annotations::ADDRESS_POOL.to_string(),
        "ext".to_string(),
    )]));
    let mut i = leading(only_ext, vec![mk_service("auto", 1), named]);
    settle(&mut i, 10);
    for name in ["auto", "named"] {
        let s = &i.services[&key(name)];
        assert!(service::status_ips(s).is_empty(), "{name} got an IP");
        let c = our_condition(s).unwrap();
        assert_eq!(c.status, "False");
        assert!(
            c.message.contains("reserved for spec.externalIPs"),
            "{name}: {}",
            c.message
        );
    }
}

#[test]
fn a_load_balancer_of_another_class_keeps_its_ingress() {
    let mut theirs = with_ingress(
        with_external(mk_service("theirs", 1), "LoadBalancer", &["198.51.100.3"]),
        &["203.0.113.200"],
    );
    theirs.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
    let mut i = leading(pools(), vec![theirs]);
    let us = settle(&mut i, 10);
    let ws = writes_to(&us, "theirs");
    assert_eq!(ws.len(), 1);
    assert!(
        matches!(ws[0], Update::ServiceConditions { .. }),
        "{:?}",
        ws[0]
    );
    assert_eq!(
        service::status_ips(&i.services[&key("theirs")]),
        vec!["203.0.113.200".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(ext_condition(&i, "theirs").unwrap().status, "True");
}

#[test]
fn a_load_balancer_holding_the_address_wins_until_it_lets_go() {
    // `old` held 198.51.100.2 before pool `ext` was marked: it keeps it (claimed on
    // restart, never moved) and the lister is refused.
    let mut ours = mk_pool("ext", &["198.51.100.0/28"]);
    let old = mk_service("old", 1);
    let mut i = leading(vec![ours.clone()], vec![old.clone()]);
    settle(&mut i, 10);
    let held = service::status_ips(&i.services[&key("old")]);
    assert_eq!(held, vec!["198.51.100.0".parse::<IpAddr>().unwrap()]);

    ours.spec.external_ips = Some(PoolExternalIPs {
        namespaces: vec!["ns".into()],
    });
    ours.metadata.resource_version = Some("2".into());
    i.apply_pool(ours);
    let lister = with_external(mk_service("lister", 2), "NodePort", &["198.51.100.0"]);
    i.apply_service(lister);
    let us = settle(&mut i, 20);
    assert!(
        writes_to(&us, "old").is_empty(),
        "the holder is not moved: {us:#?}"
    );
    let c = ext_condition(&i, "lister").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "HeldByLoadBalancer")
    );
    let Update::ServiceConditions { events, .. } = writes_to(&us, "lister")[0] else {
        panic!()
    };
    assert!(events[0].warning && events[0].reason == "ExternalIPsRejected");

    // The holder goes away: the lister is judged again and accepted.
    i.delete_service(&key("old"));
    settle(&mut i, 30);
    assert_eq!(ext_condition(&i, "lister").unwrap().status, "True");
}

#[test]
fn marking_a_pool_or_dropping_the_external_ips_rejudges() {
    let mut plain = mk_pool("ext", &["198.51.100.0/28"]);
    let lister = with_external(mk_service("lister", 1), "ClusterIP", &["198.51.100.4"]);
    let mut i = leading(vec![plain.clone()], vec![lister.clone()]);
    settle(&mut i, 10);
    let c = ext_condition(&i, "lister").unwrap();
    assert_eq!(c.reason, "PoolNotMarked");

    plain.spec.external_ips = Some(PoolExternalIPs {
        namespaces: vec!["ns".into()],
    });
    plain.metadata.resource_version = Some("2".into());
    i.apply_pool(plain);
    settle(&mut i, 20);
    assert_eq!(ext_condition(&i, "lister").unwrap().reason, "Accepted");

    // The Service drops its externalIPs: our condition is removed, nothing else touched.
    let mut dropped = i.services[&key("lister")].clone();
    dropped.spec.as_mut().unwrap().external_ips = None;
    i.apply_service(dropped);
    let us = settle(&mut i, 30);
    assert_eq!(writes_to(&us, "lister").len(), 1);
    assert_eq!(ext_condition(&i, "lister"), None);
}
