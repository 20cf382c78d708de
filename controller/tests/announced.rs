//! The controller folds the speakers' NodeAnnouncements into each Service's
//! `ferrolb.io/Announced` condition, on the test API server and (make test-k8s) on a real
//! kube-apiserver. The reports and speaker Leases are written here as speakers would.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ferrolb_crds::conditions::ANNOUNCED;
use ferrolb_crds::speaker_lease;
use ferrolb_crds::{
    IpReport, NodeAnnouncement, NodeAnnouncementSpec, PeerIncarnation, ServiceReport,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use support::*;

/// The namespace the test controller watches speaker Leases in (its lease namespace).
const LEASE_NS: &str = "default";

struct Speakers<'a> {
    env: &'a Env,
    nodes: Vec<String>,
}

impl Speakers<'_> {
    /// Writes (or renews) `node`'s speaker Lease with `incarnation`.
    async fn lease(&self, node: &str, incarnation: &str) {
        let api: Api<Lease> = Api::namespaced(self.env.client.clone(), LEASE_NS);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(format!("{}{node}", speaker_lease::PREFIX)),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/component".into(),
                    "speaker".into(),
                )])),
                annotations: Some(BTreeMap::from([(
                    speaker_lease::INCARNATION_ANNOTATION.into(),
                    incarnation.into(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.into()),
                lease_duration_seconds: Some(90),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let name = lease.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("ferrolb-speaker").force(),
            &Patch::Apply(&lease),
        )
        .await
        .expect("apply speaker Lease");
    }

    /// Writes `node`'s NodeAnnouncement.
    async fn report(&self, node: &str, spec: NodeAnnouncementSpec) {
        let api: Api<NodeAnnouncement> = Api::all(self.env.client.clone());
        let mut o = NodeAnnouncement::new(node, spec);
        o.metadata.name = Some(node.into());
        api.patch(
            node,
            &PatchParams::apply("ferrolb-speaker").force(),
            &Patch::Apply(&o),
        )
        .await
        .expect("apply NodeAnnouncement");
    }

    async fn remove(&self) {
        let leases: Api<Lease> = Api::namespaced(self.env.client.clone(), LEASE_NS);
        let reports: Api<NodeAnnouncement> = Api::all(self.env.client.clone());
        for n in &self.nodes {
            let _ = leases
                .delete(
                    &format!("{}{n}", speaker_lease::PREFIX),
                    &DeleteParams::default(),
                )
                .await;
            let _ = reports.delete(n, &DeleteParams::default()).await;
        }
    }
}

fn claims(incarnation: &str, node: &str, service: &str, ip: &str) -> NodeAnnouncementSpec {
    NodeAnnouncementSpec {
        incarnation: incarnation.into(),
        serving: true,
        services: vec![ServiceReport {
            service: service.into(),
            ips: vec![IpReport {
                ip: ip.into(),
                node: Some(node.into()),
                interfaces: vec!["eth0".into()],
                ..Default::default()
            }],
        }],
        ..Default::default()
    }
}

fn counting_out(
    mut r: NodeAnnouncementSpec,
    node: &str,
    incarnation: &str,
) -> NodeAnnouncementSpec {
    r.down.push(PeerIncarnation {
        node: node.into(),
        incarnation: incarnation.into(),
    });
    r
}

/// `node`'s report of an IP it won but withholds: a host that is no FerroLB node uses it.
fn conflicted(incarnation: &str, node: &str, service: &str, ip: &str) -> NodeAnnouncementSpec {
    let mut r = claims(incarnation, node, service, ip);
    r.services[0].ips[0] = IpReport {
        ip: ip.into(),
        reason: Some("AddressConflict".into()),
        message: Some(conflict_message(node, ip)),
        ..Default::default()
    };
    r
}

const ROGUE_MAC: &str = "02:00:5e:00:53:01";

fn conflict_message(node: &str, ip: &str) -> String {
    format!(
        "{ip} is in use by another host: {ROGUE_MAC} claims it (seen by {node} on eth0; not a \
         FerroLB node); not announced until it is free"
    )
}

/// The notes of the Service's Warning `AddressConflict` Events, one per occurrence.
async fn conflict_warnings(env: &Env, ns: &str, name: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), ns);
    api.list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some("AddressConflict")
                && e.type_.as_deref() == Some("Warning")
        })
        .flat_map(|e| {
            let n = e.series.as_ref().map_or(1, |s| s.count.max(1));
            std::iter::repeat_n(e.note.unwrap_or_default(), n as usize)
        })
        .collect()
}

async fn announced(env: &Env, ns: &str, name: &str) -> Option<Condition> {
    let s = env.services(ns).get(name).await.ok()?;
    s.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == ANNOUNCED)
}

#[tokio::test]
async fn the_announced_condition_follows_the_speakers_reports() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("announced", &[]).await;
    env.pool("announced", &["203.0.113.40/30"], |_| {}).await;
    env.service(&ns, "web", &[], env.lb_spec(80)).await;
    let ip = env.ips(&ns, "web").await[0].to_string();
    let key = format!("{ns}/web");
    let (n1, n2) = (env.name("n1"), env.name("n2"));
    let sp = Speakers {
        env: &env,
        nodes: vec![n1.clone(), n2.clone()],
    };
    sp.lease(&n1, "11").await;
    sp.lease(&n2, "22").await;

    // n1 announces: the condition names it, with a Normal Announcing Event.
    sp.report(&n1, claims("11", &n1, &key, &ip)).await;
    sp.report(
        &n2,
        NodeAnnouncementSpec {
            incarnation: "22".into(),
            serving: true,
            ..Default::default()
        },
    )
    .await;
    let want = format!("node {n1} announces {ip} on eth0");
    env.eventually("Announced names n1", 15, || async {
        let c = announced(&env, &ns, "web").await?;
        (c.status == "True" && c.reason == "Announced" && c.message == want).then_some(())
    })
    .await;
    env.eventually("an Announcing Event", 10, || async {
        env.event_reasons(&ns, "web")
            .await
            .contains(&"Announcing".to_string())
            .then_some(())
    })
    .await;

    // n1 crashes: its report still claims the IP; n2 takes over and counts n1's
    // incarnation out. The condition moves to n2 and never says SplitAnnouncement.
    sp.report(&n2, counting_out(claims("22", &n2, &key, &ip), &n1, "11"))
        .await;
    let want = format!("node {n2} announces {ip} on eth0");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut moved_at = None;
    loop {
        let c = announced(&env, &ns, "web").await.expect("condition");
        assert_ne!(
            c.reason, "SplitAnnouncement",
            "a takeover is no split: {c:?}"
        );
        if c.message == want && moved_at.is_none() {
            moved_at = Some(tokio::time::Instant::now());
        }
        // Watch past the split grace (3 s) once moved.
        if moved_at.is_some_and(|t| t.elapsed() > Duration::from_secs(4)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never moved to n2: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // n1 comes back (new incarnation) and both count each other out while both claim
    // the IP: that is two answerers, shown as such after the grace.
    sp.lease(&n1, "33").await;
    sp.report(&n1, counting_out(claims("33", &n1, &key, &ip), &n2, "22"))
        .await;
    sp.report(&n2, counting_out(claims("22", &n2, &key, &ip), &n1, "33"))
        .await;
    env.eventually("SplitAnnouncement", 15, || async {
        let c = announced(&env, &ns, "web").await?;
        (c.status == "False"
            && c.reason == "SplitAnnouncement"
            && c.message.contains(&n1)
            && c.message.contains(&n2))
        .then_some(())
    })
    .await;

    sp.remove().await;
    env.cleanup().await;
}

/// A speaker that finds another host on the IP it won withholds it and says so in its
/// report: the condition turns False with the speaker's message and one Warning Event is
/// recorded per conflict, not one per round; once the host is gone the IP is announced,
/// and a conflict that comes back warns again.
#[tokio::test]
async fn an_address_conflict_turns_the_condition_false_and_warns_once() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("conflict", &[]).await;
    env.pool("conflict", &["203.0.113.44/30"], |_| {}).await;
    env.service(&ns, "web", &[], env.lb_spec(80)).await;
    let ip = env.ips(&ns, "web").await[0].to_string();
    let key = format!("{ns}/web");
    let (n1, n2) = (env.name("n1"), env.name("n2"));
    let sp = Speakers {
        env: &env,
        nodes: vec![n1.clone(), n2.clone()],
    };
    sp.lease(&n1, "11").await;
    sp.lease(&n2, "22").await;
    sp.report(
        &n2,
        NodeAnnouncementSpec {
            incarnation: "22".into(),
            serving: true,
            ..Default::default()
        },
    )
    .await;

    sp.report(&n1, conflicted("11", &n1, &key, &ip)).await;
    let want = conflict_message(&n1, &ip);
    env.eventually("Announced=False, AddressConflict", 15, || async {
        let c = announced(&env, &ns, "web").await?;
        (c.status == "False" && c.reason == "AddressConflict" && c.message == want).then_some(())
    })
    .await;
    env.eventually("an AddressConflict Warning", 10, || async {
        (!conflict_warnings(&env, &ns, "web").await.is_empty()).then_some(())
    })
    .await;
    // The controller looks again every second: still one Warning after a few rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(conflict_warnings(&env, &ns, "web").await, [want]);

    // The host leaves: n1 announces.
    sp.report(&n1, claims("11", &n1, &key, &ip)).await;
    let announced_msg = format!("node {n1} announces {ip} on eth0");
    env.eventually("Announced names n1", 15, || async {
        let c = announced(&env, &ns, "web").await?;
        (c.status == "True" && c.message == announced_msg).then_some(())
    })
    .await;

    // It comes back: a second Warning.
    sp.report(&n1, conflicted("11", &n1, &key, &ip)).await;
    env.eventually("a second AddressConflict Warning", 15, || async {
        (conflict_warnings(&env, &ns, "web").await.len() == 2).then_some(())
    })
    .await;

    sp.remove().await;
    env.cleanup().await;
}
