//! The speaker's own Lease (`ferrolb-speaker-<node>`): how peers find its heartbeat
//! address, incarnation, heartbeat public key, interface MACs and the Local Services whose
//! kube-proxy health check fails on its node (crate::health), and how an operator sees
//! which speakers exist (`kubectl get leases`). The public key is only as trustworthy as the Lease: each
//! speaker must be able to write its own Lease only (the ValidatingAdmissionPolicy in
//! `deploy/`), or a compromised node could publish its key as another node's.
//!
//! Liveness itself travels over the heartbeats, so the Lease is renewed only every
//! `renew` (30 s by default): API writes grow with nodes, never with Services. The Lease
//! is owned by the Node object, so deleting the Node garbage-collects it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::liveness::VerifyingKey;
use crate::wire::MacAddr;
use crate::world::{
    HEARTBEAT_ADDR_ANNOTATION, INCARNATION_ANNOTATION, LEASE_PREFIX, MACS_ANNOTATION,
    PUBKEY_ANNOTATION, UNHEALTHY_SERVICES_ANNOTATION, encode_macs, encode_pubkey, encode_unhealthy,
};

/// Where and as whom this speaker's heartbeats come: what its Lease publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The heartbeat address.
    pub heartbeat: SocketAddr,
    /// This start's incarnation.
    pub incarnation: u64,
    /// The public half of this start's heartbeat signing key
    /// ([`crate::liveness::Liveness::public_key`]).
    pub pubkey: VerifyingKey,
}

/// What this speaker's Lease publishes that changes while it runs; a change is written
/// at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// Its interfaces' MACs.
    pub macs: BTreeSet<MacAddr>,
    /// The Local Services whose kube-proxy health check fails here (`ns/name`).
    pub unhealthy: BTreeSet<String>,
}

/// The Lease this speaker maintains.
pub fn lease(
    node: &str,
    node_uid: Option<String>,
    published: Published,
    dynamic: &Dynamic,
    renew: Duration,
    now: Timestamp,
) -> Lease {
    let mut annotations = BTreeMap::from([
        (
            HEARTBEAT_ADDR_ANNOTATION.into(),
            published.heartbeat.to_string(),
        ),
        (
            INCARNATION_ANNOTATION.into(),
            published.incarnation.to_string(),
        ),
        (PUBKEY_ANNOTATION.into(), encode_pubkey(&published.pubkey)),
        (MACS_ANNOTATION.into(), encode_macs(&dynamic.macs)),
    ]);
    if let Some(v) = encode_unhealthy(&dynamic.unhealthy) {
        annotations.insert(UNHEALTHY_SERVICES_ANNOTATION.into(), v);
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("{LEASE_PREFIX}{node}")),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "ferrolb".into()),
                ("app.kubernetes.io/component".into(), "speaker".into()),
            ])),
            annotations: Some(annotations),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node.into(),
                    uid,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(i32::try_from(renew.as_secs() * 3).unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// Keeps the Lease present and renewed until the task is dropped, and rewrites it at once
/// when the interface MACs on `macs` or the unhealthy Services on `unhealthy` change (a
/// closed `unhealthy` channel, as with `--kube-proxy-health-check=false`, publishes none).
/// API errors are logged and retried next period; they never affect announcing
/// (fail-static).
pub fn spawn(
    client: Client,
    namespace: String,
    node: String,
    published: Published,
    mut macs: watch::Receiver<BTreeSet<MacAddr>>,
    mut unhealthy: watch::Receiver<BTreeSet<String>>,
    renew: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
        let nodes: Api<Node> = Api::all(client);
        let name = format!("{LEASE_PREFIX}{node}");
        loop {
            let uid = nodes
                .get_opt(&node)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.metadata.uid);
            let current = Dynamic {
                macs: macs.borrow_and_update().clone(),
                unhealthy: unhealthy.borrow_and_update().clone(),
            };
            let mut want = lease(&node, uid, published, &current, renew, Timestamp::now());
            let r = match leases.get_opt(&name).await {
                Ok(Some(cur)) => {
                    want.metadata.resource_version = cur.metadata.resource_version;
                    leases
                        .replace(&name, &PostParams::default(), &want)
                        .await
                        .map(drop)
                }
                Ok(None) => leases.create(&PostParams::default(), &want).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, lease = %name, "cannot renew the speaker lease; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(renew) => {}
                Ok(()) = macs.changed() => {}
                Ok(()) = unhealthy.changed() => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_the_node_and_publishes_the_heartbeat_address_and_key() {
        let pubkey = crate::liveness::SigningKey::from_bytes(&[5; 32]).verifying_key();
        let published = Published {
            heartbeat: "198.51.100.11:7473".parse().unwrap(),
            incarnation: 7,
            pubkey,
        };
        let macs = BTreeSet::from([MacAddr::new(2, 0, 0, 0, 0, 0x11)]);
        let dynamic = Dynamic {
            macs: macs.clone(),
            unhealthy: BTreeSet::new(),
        };
        let l = lease(
            "node1",
            Some("u1".into()),
            published,
            &dynamic,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        );
        assert!(
            !l.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(UNHEALTHY_SERVICES_ANNOTATION),
            "absent when every check passes"
        );
        assert_eq!(crate::world::unhealthy(&l), None);
        assert_eq!(
            crate::world::fleet([&l], "node2", &BTreeSet::new()).macs,
            macs,
            "peers read our MACs"
        );
        assert_eq!(
            crate::world::peer(&l),
            Some((
                "node1".into(),
                crate::liveness::PeerAddr {
                    addr: published.heartbeat,
                    incarnation: Some(7),
                    fresh: true,
                    pubkey: Some(pubkey),
                }
            ))
        );
        assert_eq!(l.metadata.owner_references.unwrap()[0].uid, "u1");
        assert_eq!(l.spec.unwrap().lease_duration_seconds, Some(90));
    }

    #[test]
    fn lease_publishes_the_unhealthy_services_sorted_for_peers() {
        let published = Published {
            heartbeat: "198.51.100.11:7473".parse().unwrap(),
            incarnation: 7,
            pubkey: crate::liveness::SigningKey::from_bytes(&[5; 32]).verifying_key(),
        };
        let unhealthy: BTreeSet<String> = ["ns/web", "a/db"].map(String::from).into();
        let dynamic = Dynamic {
            unhealthy: unhealthy.clone(),
            ..Default::default()
        };
        let l = lease(
            "node1",
            None,
            published,
            &dynamic,
            Duration::from_secs(30),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            l.metadata.annotations.as_ref().unwrap()[UNHEALTHY_SERVICES_ANNOTATION],
            "a/db,ns/web"
        );
        assert_eq!(
            crate::world::unhealthy(&l),
            Some(("node1".into(), unhealthy))
        );
    }
}
