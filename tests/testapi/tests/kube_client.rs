//! Drives ferrolb-testapi with a real kube-rs client, watcher and reflector, through a
//! kubeconfig written by `write_kubeconfig`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrolb_testapi::{TestApi, TestApiConfig};
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Node, NodeSpec, Service, ServicePort, ServiceSpec,
    ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A server plus a client built from the kubeconfig it wrote.
async fn setup_with(config: TestApiConfig) -> (TestApi, Client) {
    let api = TestApi::start_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let path = std::env::temp_dir().join(format!(
        "ferrolb-testapi-{}-{}/kubeconfig",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    api.write_kubeconfig(&path).unwrap();
    let kc = Kubeconfig::read_from(&path).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(cfg.default_namespace, "default");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    (api, Client::try_from(cfg).unwrap())
}

async fn setup() -> (TestApi, Client) {
    setup_with(TestApiConfig::default()).await
}

fn code(r: Result<impl std::fmt::Debug, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn service(name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn lb_status(ip: &str) -> ServiceStatus {
    ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

fn lb_ip(s: &Service) -> Option<String> {
    s.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?[0]
        .ip
        .clone()
}

async fn next_event<S, T>(s: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("timed out waiting for a stream item")
        .expect("stream ended")
}

#[tokio::test]
async fn service_crud_replace_conflict_patch_apply_delete() {
    let (server, client) = setup().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");

    let created = svcs
        .create(&PostParams::default(), &service("web", &[("app", "web")]))
        .await
        .unwrap();
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    assert_eq!(
        created.metadata.generation, None,
        "kube-apiserver keeps no generation for Services"
    );
    assert_eq!(
        code(
            svcs.create(&PostParams::default(), &service("web", &[]))
                .await
        ),
        409
    );

    let got = svcs.get("web").await.unwrap();
    assert_eq!(got.resource_version(), created.resource_version());
    assert_eq!(
        svcs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // Replace with the current RV works; the stale RV then conflicts.
    let mut v2 = got.clone();
    v2.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8080;
    let replaced = svcs
        .replace("web", &PostParams::default(), &v2)
        .await
        .unwrap();
    assert_ne!(replaced.resource_version(), got.resource_version());
    match svcs.replace("web", &PostParams::default(), &v2).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        other => panic!("expected conflict, got {other:?}"),
    }

    let patched = svcs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.annotations().get("a").map(String::as_str),
        Some("1")
    );

    // Server-side apply: two managers disagree on a field.
    let apply = |sel: &str| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": sel}},
        })
    };
    let a = svcs
        .patch(
            "web",
            &PatchParams::apply("manager-a"),
            &Patch::Apply(apply("a")),
        )
        .await
        .unwrap();
    assert_eq!(a.spec.unwrap().selector.unwrap()["app"], "a");
    match svcs
        .patch(
            "web",
            &PatchParams::apply("manager-b"),
            &Patch::Apply(apply("b")),
        )
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert_eq!(
                s.message,
                "Apply failed with 1 conflict: conflict with \"manager-a\": .spec.selector.app"
            );
            let causes = s.details.unwrap().causes;
            assert_eq!(causes[0].reason, "FieldManagerConflict");
            assert_eq!(causes[0].field, ".spec.selector.app");
        }
        other => panic!("expected apply conflict, got {other:?}"),
    }
    let b = svcs
        .patch(
            "web",
            &PatchParams::apply("manager-b").force(),
            &Patch::Apply(apply("b")),
        )
        .await
        .unwrap();
    assert_eq!(b.spec.unwrap().selector.unwrap()["app"], "b");
    // manager-a lost the field: a different value from it now conflicts with manager-b.
    svcs.patch(
        "web",
        &PatchParams::apply("manager-a"),
        &Patch::Apply(apply("a2")),
    )
    .await
    .expect_err("manager-b owns it now");

    let deleted = svcs.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left(), "the deleted object is returned");
    assert_eq!(code(svcs.get("web").await), 404);
    assert_eq!(
        code(svcs.delete("web", &DeleteParams::default()).await),
        404
    );
    drop(server);
}

#[tokio::test]
async fn status_subresource_isolation() {
    let (_server, client) = setup().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let mut s = service("lb", &[]);
    s.status = Some(lb_status("203.0.113.99"));
    let created = svcs.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(lb_ip(&created), None, "create drops status");

    let st = svcs
        .patch_status(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "spec": {"type": "ClusterIP"},
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}},
            })),
        )
        .await
        .unwrap();
    assert_eq!(lb_ip(&st).as_deref(), Some("203.0.113.1"));
    assert_eq!(
        st.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    assert_eq!(st.metadata.generation, None);

    let main = svcs
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        lb_ip(&main).as_deref(),
        Some("203.0.113.1"),
        "main patch cannot change status"
    );

    let mut full = svcs.get("lb").await.unwrap();
    full.status = Some(lb_status("203.0.113.2"));
    let replaced = svcs
        .replace_status("lb", &PostParams::default(), &full)
        .await
        .unwrap();
    assert_eq!(lb_ip(&replaced).as_deref(), Some("203.0.113.2"));

    // Server-side apply through /status by two managers on separate conditions.
    let cond = |t: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
               "status": {"conditions": [{"type": t, "status": "True", "reason": "R", "message": "",
                                           "lastTransitionTime": "2025-01-01T00:00:00Z"}]}})
    };
    svcs.patch_status(
        "lb",
        &PatchParams::apply("controller"),
        &Patch::Apply(cond("ferrolb.io/IPAllocated")),
    )
    .await
    .unwrap();
    let both = svcs
        .patch_status(
            "lb",
            &PatchParams::apply("speaker"),
            &Patch::Apply(cond("ferrolb.io/Announced")),
        )
        .await
        .unwrap();
    assert_eq!(both.status.unwrap().conditions.unwrap().len(), 2);
}

#[tokio::test]
async fn nodes_are_cluster_scoped() {
    let (_server, client) = setup().await;
    let nodes: Api<Node> = Api::all(client);
    for (name, zone) in [("n1", "a"), ("n2", "b")] {
        let n = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("zone".to_string(), zone.to_string())])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            ..Default::default()
        };
        let created = nodes.create(&PostParams::default(), &n).await.unwrap();
        assert_eq!(created.namespace(), None);
    }
    let zone_a = nodes
        .list(&ListParams::default().labels("zone=a"))
        .await
        .unwrap();
    assert_eq!(zone_a.items.len(), 1);
    assert_eq!(zone_a.items[0].name_any(), "n1");
    let not_a = nodes
        .list(&ListParams::default().labels("zone notin (a)"))
        .await
        .unwrap();
    assert_eq!(not_a.items[0].name_any(), "n2");
    let by_name = nodes
        .list(&ListParams::default().fields("metadata.name=n2"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);

    let st = nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().conditions.unwrap()[0].status, "True");
    let p = nodes
        .patch(
            "n1",
            &PatchParams::apply("kubelet").force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                                 "spec": {"unschedulable": true}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.spec.unwrap().unschedulable, Some(true));
    let unsched = nodes
        .list(&ListParams::default().fields("spec.unschedulable=true"))
        .await
        .unwrap();
    assert_eq!(unsched.items.len(), 1);
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn leases_in_a_group() {
    let (server, client) = setup().await;
    let leases: Api<Lease> = Api::namespaced(client, "ferrolb-system");
    let l = Lease {
        metadata: ObjectMeta {
            name: Some("ferrolb-controller".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &l).await.unwrap();
    let mut take = created.clone();
    take.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("ferrolb-controller", &PostParams::default(), &take)
        .await
        .unwrap();
    // A second replace with the same (now stale) RV is how leader election loses a race.
    assert_eq!(
        code(
            leases
                .replace("ferrolb-controller", &PostParams::default(), &take)
                .await
        ),
        409
    );
    let got = leases.get("ferrolb-controller").await.unwrap();
    assert_eq!(got.spec.unwrap().holder_identity.as_deref(), Some("b"));
    assert_eq!(
        code(leases.get_status("ferrolb-controller").await),
        404,
        "no /status"
    );
    let obj = server
        .object("/apis/coordination.k8s.io/v1/namespaces/ferrolb-system/leases/ferrolb-controller")
        .unwrap();
    assert_eq!(obj["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(obj["kind"], "Lease");
    leases
        .delete("ferrolb-controller", &DeleteParams::default())
        .await
        .unwrap();
}

fn pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ferrolb.io", "v1alpha1", "IPAddressPool"),
        "ipaddresspools",
    )
}

#[tokio::test]
async fn dynamic_custom_resource() {
    let (_server, client) = setup().await;
    let ar = pool_resource();
    let pools: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut pool = DynamicObject::new("pool-a", &ar);
    pool.data = json!({"spec": {"addresses": ["203.0.113.0/28"]}});
    let created = pools.create(&PostParams::default(), &pool).await.unwrap();
    assert_eq!(created.types.as_ref().unwrap().kind, "IPAddressPool");
    assert_eq!(created.data["spec"]["addresses"][0], "203.0.113.0/28");

    let list = pools.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);

    let cfg = |spec: serde_json::Value| {
        json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
               "metadata": {"name": "pool-b"}, "spec": spec})
    };
    let gitops = cfg(json!({"addresses": ["198.51.100.0/24"], "autoAssign": true}));
    let human = cfg(json!({"addresses": ["203.0.113.64/26"]}));
    let b = pools
        .patch(
            "pool-b",
            &PatchParams::apply("gitops"),
            &Patch::Apply(gitops),
        )
        .await
        .unwrap();
    assert_eq!(b.data["spec"]["autoAssign"], true, "apply creates");
    match pools
        .patch(
            "pool-b",
            &PatchParams::apply("human"),
            &Patch::Apply(human.clone()),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(
            s.message,
            "Apply failed with 1 conflict: conflict with \"gitops\": .spec.addresses"
        ),
        other => panic!("expected conflict, got {other:?}"),
    }
    let forced = pools
        .patch(
            "pool-b",
            &PatchParams::apply("human").force(),
            &Patch::Apply(human),
        )
        .await
        .unwrap();
    assert_eq!(forced.data["spec"]["addresses"][0], "203.0.113.64/26");
    // gitops drops autoAssign from its config; nobody else owns it, so it goes.
    let dropped = pools
        .patch(
            "pool-b",
            &PatchParams::apply("gitops"),
            &Patch::Apply(
                json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
                                  "metadata": {"name": "pool-b"}, "spec": {}}),
            ),
        )
        .await
        .unwrap();
    assert!(
        dropped.data["spec"].get("autoAssign").is_none(),
        "{:?}",
        dropped.data
    );
    assert_eq!(
        dropped.data["spec"]["addresses"][0], "203.0.113.64/26",
        "still owned by human"
    );

    let st = pools
        .patch_status(
            "pool-a",
            &PatchParams::apply("ferrolb-controller"),
            &Patch::Apply(
                json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
                                  "metadata": {"name": "pool-a"}, "status": {"assignedIPv4": 3},
                                  "spec": {"addresses": []}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["assignedIPv4"], 3);
    assert_eq!(st.data["spec"]["addresses"][0], "203.0.113.0/28");

    pools
        .delete("pool-a", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        pools
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn selectors_and_pagination_across_namespaces() {
    let (_server, client) = setup().await;
    for (ns, name, tier) in [
        ("a", "s1", "web"),
        ("a", "s2", "db"),
        ("b", "s3", "web"),
        ("b", "s4", "web"),
    ] {
        Api::<Service>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &service(name, &[("tier", tier)]))
            .await
            .unwrap();
    }
    let all: Api<Service> = Api::all(client.clone());
    let web = all
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(
        web.items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["s1", "s3", "s4"]
    );
    let ns_b = all
        .list(&ListParams::default().fields("metadata.namespace=b,metadata.name!=s3"))
        .await
        .unwrap();
    assert_eq!(ns_b.items.len(), 1);
    assert_eq!(ns_b.items[0].name_any(), "s4");
    assert_eq!(
        code(all.list(&ListParams::default().fields("spec.type=x")).await),
        400
    );
    assert_eq!(
        code(all.list(&ListParams::default().labels("tier in (")).await),
        400
    );

    let page1 = all.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page1.items.len(), 3);
    let token = page1.metadata.continue_.clone().expect("continue token");
    let page2 = all
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 1);
    assert_eq!(page2.items[0].name_any(), "s4");
    assert!(page2.metadata.continue_.is_none());
}

#[tokio::test]
async fn watcher_sees_init_then_live_events() {
    let (_server, client) = setup().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    svcs.create(&PostParams::default(), &service("before", &[]))
        .await
        .unwrap();

    let mut w = watcher(svcs.clone(), watcher::Config::default()).boxed();
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        watcher::Event::Init
    ));
    match next_event(&mut w).await.unwrap() {
        watcher::Event::InitApply(s) => assert_eq!(s.name_any(), "before"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        watcher::Event::InitDone
    ));

    svcs.create(&PostParams::default(), &service("live", &[]))
        .await
        .unwrap();
    match next_event(&mut w).await.unwrap() {
        watcher::Event::Apply(s) => assert_eq!(s.name_any(), "live"),
        other => panic!("unexpected {other:?}"),
    }
    svcs.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    match next_event(&mut w).await.unwrap() {
        watcher::Event::Delete(s) => assert_eq!(s.name_any(), "before"),
        other => panic!("unexpected {other:?}"),
    }

    // Streaming lists: initial events end with the annotated bookmark.
    let mut s = watcher(svcs.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(
        next_event(&mut s).await.unwrap(),
        watcher::Event::Init
    ));
    match next_event(&mut s).await.unwrap() {
        watcher::Event::InitApply(s) => assert_eq!(s.name_any(), "live"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        next_event(&mut s).await.unwrap(),
        watcher::Event::InitDone
    ));

    // A label-selector watcher sees an object enter and leave its selection.
    let mut sel = watcher(svcs.clone(), watcher::Config::default().labels("team=x")).boxed();
    assert!(matches!(
        next_event(&mut sel).await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next_event(&mut sel).await.unwrap(),
        watcher::Event::InitDone
    ));
    for team in ["x", "y"] {
        svcs.patch(
            "live",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": team}}})),
        )
        .await
        .unwrap();
    }
    match next_event(&mut sel).await.unwrap() {
        watcher::Event::Apply(s) => assert_eq!(s.labels()["team"], "x"),
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut sel).await.unwrap() {
        watcher::Event::Delete(s) => assert_eq!(s.name_any(), "live"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn selector_watch_turns_unmatch_into_delete() {
    let (_server, client) = setup().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let rv = svcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = svcs
        .watch(
            &WatchParams::default().labels("team=x").disable_bookmarks(),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    svcs.create(&PostParams::default(), &service("s", &[("team", "x")]))
        .await
        .unwrap();
    svcs.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "y"}}})),
    )
    .await
    .unwrap();
    svcs.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(match next_event(&mut w).await.unwrap() {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(kinds, ["ADDED", "DELETED", "ADDED"]);
}

#[tokio::test]
async fn reflector_store_converges() {
    let (_server, client) = setup().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(writer, watcher(svcs.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| async {});
    let task = tokio::spawn(stream);
    tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    for n in ["a", "b", "c"] {
        svcs.create(&PostParams::default(), &service(n, &[]))
            .await
            .unwrap();
    }
    svcs.delete("b", &DeleteParams::default()).await.unwrap();
    svcs.patch_status(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}})),
    )
    .await
    .unwrap();
    let converged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut names: Vec<String> = reader.state().iter().map(|s| s.name_any()).collect();
            names.sort();
            let c_ip = reader
                .get(&reflector::ObjectRef::new("c").within("default"))
                .and_then(|s| lb_ip(&s));
            if names == ["a", "c"] && c_ip.as_deref() == Some("203.0.113.7") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(converged.is_ok(), "store state: {:?}", reader.state());
    task.abort();
}

#[tokio::test]
async fn compaction_gives_410_and_watcher_relists() {
    // Long bookmark interval: the watcher's RV must not advance past the compaction.
    let (server, client) = setup_with(TestApiConfig {
        bookmark_interval: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    svcs.create(&PostParams::default(), &service("old", &[]))
        .await
        .unwrap();
    let old_rv = svcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let (reader, writer) = reflector::store::<Service>();
    let mut w = reflector(writer, watcher(svcs.clone(), watcher::Config::default())).boxed();
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        watcher::Event::InitApply(_)
    ));
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        watcher::Event::InitDone
    ));

    // A write elsewhere moves the global RV; compaction then leaves the watcher behind.
    Api::<Node>::all(client.clone())
        .create(
            &PostParams::default(),
            &Node {
                metadata: ObjectMeta {
                    name: Some("n".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    server.compact();

    // A raw watch from the old RV gets the real server's 410 ERROR event.
    let mut raw = svcs
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut raw).await.unwrap() {
        WatchEvent::Error(s) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
            assert!(
                s.message.starts_with("too old resource version"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }

    // Remove "old" and add "new" while the watcher is cut off, then make it reconnect.
    server.close_watches();
    let mut saw_410 = false;
    let mut relisted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline && !(saw_410 && relisted) {
        match next_event(&mut w).await {
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                saw_410 = true;
                svcs.delete("old", &DeleteParams::default()).await.unwrap();
                svcs.create(&PostParams::default(), &service("new", &[]))
                    .await
                    .unwrap();
            }
            Ok(watcher::Event::InitDone) if saw_410 => relisted = true,
            _ => {}
        }
    }
    assert!(saw_410, "watcher never saw 410");
    assert!(relisted, "watcher never re-listed");
    let names: Vec<String> = reader.state().iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["new"]);
}

#[tokio::test]
async fn injected_failures_and_counters() {
    let (server, client) = setup().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    svcs.create(&PostParams::default(), &service("x", &[]))
        .await
        .unwrap();

    server.fail_next(1, 500);
    match svcs.get("x").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
        other => panic!("expected 500, got {other:?}"),
    }
    svcs.get("x").await.expect("only one failure was injected");

    // kube-rs retries 429 itself, honouring Retry-After.
    server.reset_counts();
    server.fail_next(1, 429);
    svcs.get("x").await.expect("retried after 429");
    assert_eq!(server.request_count(), 2);

    server.reset_counts();
    svcs.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    svcs.create(&PostParams::default(), &service("y", &[]))
        .await
        .unwrap();
    svcs.delete("y", &DeleteParams::default()).await.unwrap();
    svcs.get("x").await.unwrap();
    let w = server.write_counts();
    assert_eq!((w.create, w.update, w.patch, w.delete), (1, 0, 1, 1));
    assert_eq!(w.total(), 3);
    assert_eq!(server.request_count(), 4);
}

#[tokio::test]
async fn frozen_server_hangs_requests_and_watches() {
    let (server, client) = setup_with(TestApiConfig {
        bookmark_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let rv = svcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = svcs
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        WatchEvent::Bookmark(_)
    ));

    server.set_frozen(true);
    // Drain whatever was already in flight, then expect silence.
    while tokio::time::timeout(Duration::from_millis(100), w.next())
        .await
        .is_ok()
    {}
    assert!(
        tokio::time::timeout(Duration::from_millis(300), w.next())
            .await
            .is_err()
    );
    let get = svcs.get("nope");
    tokio::pin!(get);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut get)
            .await
            .is_err()
    );
    server.set_frozen(false);
    assert_eq!(
        code(
            tokio::time::timeout(Duration::from_secs(2), get)
                .await
                .unwrap()
        ),
        404
    );
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        WatchEvent::Bookmark(_)
    ));
}

#[tokio::test]
async fn bookmarks_with_allow_watch_bookmarks() {
    let (_server, client) = setup_with(TestApiConfig {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    svcs.create(&PostParams::default(), &service("b", &[]))
        .await
        .unwrap();
    let mut w = svcs
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut w).await.unwrap(),
        WatchEvent::Added(_)
    ));
    match next_event(&mut w).await.unwrap() {
        WatchEvent::Bookmark(b) => {
            let rv: u64 = b.metadata.resource_version.parse().unwrap();
            assert!(rv >= 2);
            assert_eq!(b.types.kind, "Service");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // Without the flag, no bookmarks arrive.
    let mut quiet = svcs
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut quiet).await.unwrap(),
        WatchEvent::Added(_)
    ));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), quiet.next())
            .await
            .is_err()
    );
    // timeoutSeconds ends the stream.
    let mut short = svcs
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_event(&mut short).await.unwrap(),
        WatchEvent::Added(_)
    ));
    let end = tokio::time::timeout(Duration::from_secs(3), short.try_next())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn discovery_and_version() {
    let (server, client) = setup().await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
    assert_eq!(v.git_version, "v1.33.0-ferrolb-testapi");
    let core = client.list_core_api_versions().await.unwrap();
    assert_eq!(core.versions, ["v1"]);
    let res = client.list_core_api_resources("v1").await.unwrap();
    assert!(
        res.resources
            .iter()
            .any(|r| r.name == "nodes" && !r.namespaced)
    );
    drop(server);
}
