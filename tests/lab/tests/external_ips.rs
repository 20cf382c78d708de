//! Opt-in `spec.externalIPs` against the LAN: an address of a pool marked for them, listed
//! by a Service of a namespace the pool allows, is answered by exactly one node and reaches
//! the Service; one listed from another namespace is answered by no node; when the pool
//! stops being marked, nobody answers any more. The controller's `ferrolb.io/ExternalIPs`
//! condition says which and why, each time.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::conditions::EXTERNAL_IPS;
use ferrolb_crds::{IPAddressPool, L2AdvertisementSpec, PoolExternalIPs};
use ferrolb_lab::{Lab, LabConfig, Svc, objects};
use k8s_openapi::api::core::v1::{Namespace, Service};
use serde_json::json;

const CLIENT: &str = "client1";
const PORT: u16 = 8080;
/// In pool `ext` (203.0.113.144/28), listed by a Service of `default` (allowed).
const ALLOWED: &str = "203.0.113.150";
/// In pool `ext`, listed by a Service of `tenant-b` (not allowed).
const OTHER_NS: &str = "203.0.113.151";

/// The condition's (status, reason, message), if any.
fn condition(lab: &Lab, svc: &Svc) -> Option<(String, String, String)> {
    let s: Service = lab.get(Some(&svc.namespace), &svc.name).ok()?;
    let c = s
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == EXTERNAL_IPS)?;
    Some((c.status, c.reason, c.message))
}

/// Polls until the condition has `reason`; fails with what it last said.
fn wait_reason(lab: &Lab, svc: &Svc, reason: &str) -> (String, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = condition(lab, svc);
        if let Some(c) = &c
            && c.1 == reason
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{}/{}: the ExternalIPs condition never said {reason}; last {c:?}",
            svc.namespace,
            svc.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sweeps until `ip` has had the same single answerer for a second; returns it.
fn wait_one_answerer(lab: &Lab, ip: IpAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut since: Option<(Instant, Vec<String>)> = None;
    loop {
        let view = lab
            .answerers(CLIENT, &[ip], Duration::from_millis(300))
            .expect("sweep")
            .remove(0);
        let now = Instant::now();
        match &since {
            Some((t, v)) if view.len() == 1 && *v == view => {
                if now - *t >= Duration::from_secs(1) {
                    return view[0].clone();
                }
            }
            _ => since = (view.len() == 1).then(|| (now, view.clone())),
        }
        assert!(
            now < deadline,
            "{ip}: never one steady answerer; last {view:?}"
        );
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ext_pool(namespaces: Option<&[&str]>) -> IPAddressPool {
    let mut p = objects::pool("ext", &["203.0.113.144/28"]);
    p.spec.external_ips = namespaces.map(|ns| PoolExternalIPs {
        namespaces: ns.iter().map(|s| s.to_string()).collect(),
    });
    p
}

#[test]
fn external_ips_are_announced_only_where_the_operator_opted_in() {
    let lab = Lab::start(LabConfig::default()).expect("lab starts");
    lab.default_pool().expect("default pool");
    lab.apply(&ext_pool(Some(&["default"]))).expect("pool ext");
    lab.apply_l2adv(
        "ext",
        L2AdvertisementSpec {
            ip_address_pools: vec!["ext".into()],
            ..Default::default()
        },
    )
    .expect("advertisement ext");
    let tenant_b: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "tenant-b"}})).unwrap();
    lab.apply(&tenant_b).expect("namespace tenant-b");

    let allowed = Svc::new("ext-web", PORT)
        .cluster_ip()
        .external_ips(&[ALLOWED]);
    let other = Svc::new("ext-b", PORT)
        .cluster_ip()
        .external_ips(&[OTHER_NS])
        .in_namespace("tenant-b");
    lab.create_service(&allowed).expect("create ext-web");
    lab.create_service(&other).expect("create ext-b");
    // kube-proxy's part (the node accepts traffic for the address), which is not ours.
    lab.add_vips(&[ip(ALLOWED), ip(OTHER_NS)]).expect("vips");

    // Allowed: one answerer, the client reaches the Service, the condition says so.
    let (_, _, msg) = wait_reason(&lab, &allowed, "Accepted");
    assert_eq!(msg, format!("announcing {ALLOWED} from IPAddressPool ext"));
    let answerer = wait_one_answerer(&lab, ip(ALLOWED));
    let (_, node) = lab
        .connect_until(
            CLIENT,
            ip(ALLOWED),
            PORT,
            Instant::now() + Duration::from_secs(15),
            |_| true,
        )
        .expect("the client reaches the Service through its externalIP");
    assert_eq!(
        answerer, node,
        "the node that answers ARP serves the connection"
    );
    // A ClusterIP Service gets no LoadBalancer ingress from us.
    let s: Service = lab.get(Some("default"), "ext-web").unwrap();
    assert!(
        s.status
            .and_then(|st| st.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .is_empty()
    );

    // Another namespace: refused, and nobody answers.
    let (status, _, msg) = wait_reason(&lab, &other, "NamespaceNotAllowed");
    assert_eq!(status, "False");
    assert!(
        msg.contains("does not allow externalIPs for namespace tenant-b"),
        "{msg}"
    );
    let answered = lab
        .answerers(CLIENT, &[ip(OTHER_NS)], Duration::from_millis(500))
        .expect("sweep");
    assert!(
        answered[0].is_empty(),
        "{OTHER_NS} answered by {answered:?}"
    );

    // The operator takes the mark off: the pool is an ordinary pool again, the address is
    // no longer announced, and the condition says why.
    lab.apply(&ext_pool(None)).expect("unmark pool ext");
    let (status, _, _) = wait_reason(&lab, &allowed, "PoolNotMarked");
    assert_eq!(status, "False");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = lab
            .answerers(CLIENT, &[ip(ALLOWED)], Duration::from_millis(500))
            .expect("sweep");
        if answered[0].is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ALLOWED} still answered by {answered:?} after the pool was unmarked"
        );
    }
}
