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
