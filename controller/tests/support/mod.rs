//! Test environment for the controller's integration tests.
//!
//! By default every test starts its own in-memory test API server (`ferrolb-testapi`).
//! With `KUBECONFIG` set, the tests run against that cluster instead: they need the CRDs
//! installed (`kubectl apply -f deploy/crds/`), no other FerroLB controller serving the
//! test class, and `--test-threads 1` (pools are cluster-scoped). Every object a test
//! creates carries the run's unique prefix, and Services use a run-specific
//! `loadBalancerClass` there, so an installed FerroLB never interferes. Pools and
//! namespaces a test creates carry the label [`TEST_LABEL`]; a test that fails removes
//! them when its `Env` drops, and the next `Env` removes any a crashed run left behind
//! (a stray pool would otherwise conflict with, or out-rank, the next test's pools).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_controller::{Config, index::Index, lease::Timing, metrics::Metrics};
use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, ServiceAllocation};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::sync::watch;

/// A cluster (test API server or `KUBECONFIG`) plus helpers to drive it.
pub struct Env {
    pub client: Client,
    pub prefix: String,
    pub lb_class: String,
    real: bool,
    _api: Option<ferrolb_testapi::TestApi>,
    _dir: Option<tempdir::Dir>,
}

/// A running controller, stopped (lease released) by [`Controller::stop`] or on drop.
pub struct Controller {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub index: Arc<Mutex<Index>>,
}

impl Controller {
    /// Stops gracefully, releasing the lease.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Dies without releasing anything, like a crashed process.
    pub fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Label on every cluster-scoped object (pools) and namespace the tests create.
pub const TEST_LABEL: (&str, &str) = ("ferrolb.io/integration-test", "true");

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Env {
    /// Starts a test API server (or connects to `KUBECONFIG`).
    pub async fn new() -> Env {
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let prefix = format!("t{}x{n}", std::process::id());
        if std::env::var_os("KUBECONFIG").is_some() {
            let client = Client::try_default()
                .await
                .expect("KUBECONFIG cluster reachable");
            remove_labelled(&client, None).await;
            return Env {
                client,
                lb_class: format!("ferrolb.io/{prefix}"),
                prefix,
                real: true,
                _api: None,
                _dir: None,
            };
        }
        let api = ferrolb_testapi::TestApi::start("127.0.0.1:0".parse().unwrap())
            .await
            .expect("start test API server");
        let dir = std::env::temp_dir().join(format!("ferrolb-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        api.write_kubeconfig(&path).unwrap();
        let kc = Kubeconfig::read_from(&path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        Env {
            client,
            prefix,
            lb_class: ferrolb_crds::DEFAULT_LB_CLASS.into(),
            real: false,
            _api: Some(api),
            _dir: Some(tempdir::Dir(dir)),
        }
    }

    /// The test API server, when not running against a real cluster.
    pub fn testapi(&self) -> Option<&ferrolb_testapi::TestApi> {
        self._api.as_ref()
    }

    /// True against `KUBECONFIG`'s cluster, false on the in-memory test API server.
    pub fn is_real(&self) -> bool {
        self.real
    }

    /// A run-unique name.
    pub fn name(&self, base: &str) -> String {
        format!("{}-{base}", self.prefix)
    }

    /// Starts a controller with the given identity.
    pub fn controller(&self, identity: &str) -> Controller {
        self.controller_with(
            identity,
            Timing {
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(300),
            },
        )
    }

    /// Starts a controller with explicit election timing.
    pub fn controller_with(&self, identity: &str, timing: Timing) -> Controller {
        let config = Config {
            lb_class: self.lb_class.clone(),
            lease_namespace: "default".into(),
            lease_name: self.name("lease"),
            identity: identity.into(),
            timing,
        };
        let index = Arc::new(Mutex::new(Index::new(config.lb_class.clone())));
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry, index.clone());
        let health = Arc::new(ferrolb_ops::Health::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(ferrolb_controller::run(
            self.client.clone(),
            config,
            index.clone(),
            metrics,
            health,
            rx,
        ));
        Controller {
            stop,
            task: Some(task),
            index,
        }
    }

    pub fn pools(&self) -> Api<IPAddressPool> {
        Api::all(self.client.clone())
    }

    pub fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates a namespace with labels (run-unique name returned).
    pub async fn namespace(&self, base: &str, labels: &[(&str, &str)]) -> String {
        let name = self.name(base);
        let mut labels = to_map(labels);
        labels.insert(TEST_LABEL.0.into(), TEST_LABEL.1.into());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name
    }

    /// Creates a pool (name made run-unique) and returns its name.
    pub async fn pool(
        &self,
        base: &str,
        addresses: &[&str],
        tweak: impl FnOnce(&mut IPAddressPoolSpec),
    ) -> String {
        let name = self.name(base);
        let mut spec = IPAddressPoolSpec {
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
            external_ips: None,
        };
        tweak(&mut spec);
        let mut pool = IPAddressPool::new(&name, spec);
        pool.metadata.labels = Some(to_map(&[TEST_LABEL]));
        self.pools()
            .create(&PostParams::default(), &pool)
            .await
            .expect("create pool");
        name
    }

    /// Replaces a pool's addresses.
    pub async fn set_pool_addresses(&self, name: &str, addresses: &[&str]) {
        let patch = serde_json::json!({"spec": {"addresses": addresses}});
        self.pools()
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .expect("patch pool");
    }

    pub async fn delete_pool(&self, name: &str) {
        self.pools()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete pool");
    }

    /// A LoadBalancer Service spec with one TCP port.
    pub fn lb_spec(&self, port: i32) -> ServiceSpec {
        ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: self.real.then(|| self.lb_class.clone()),
            ports: Some(vec![ServicePort {
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    /// Creates a Service in `ns`.
    pub async fn service(
        &self,
        ns: &str,
        name: &str,
        annotations: &[(&str, &str)],
        spec: ServiceSpec,
    ) -> Service {
        self.service_labeled(ns, name, annotations, &[], spec).await
    }

    pub async fn service_labeled(
        &self,
        ns: &str,
        name: &str,
        annotations: &[(&str, &str)],
        labels: &[(&str, &str)],
        spec: ServiceSpec,
    ) -> Service {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                annotations: Some(to_map(annotations)),
                labels: Some(to_map(labels)),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        self.services(ns)
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service")
    }

    /// Waits until `check` returns Some, polling; panics with `what` after `secs`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, secs: u64, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Service's IPs once it has some.
    pub async fn ips(&self, ns: &str, name: &str) -> Vec<IpAddr> {
        let api = self.services(ns);
        self.eventually(&format!("{ns}/{name} gets an IP"), 15, || async {
            let s = api.get(name).await.ok()?;
            let ips = ips_of(&s);
            (!ips.is_empty()).then_some(ips)
        })
        .await
    }

    /// The Service's `ferrolb.io/IPAllocated` condition once its reason is `reason`.
    pub async fn condition(&self, ns: &str, name: &str, reason: &str) -> Condition {
        let api = self.services(ns);
        self.eventually(
            &format!("{ns}/{name} condition reason {reason}"),
            15,
            || async {
                let s = api.get(name).await.ok()?;
                let c = allocated_condition(&s)?;
                (c.reason == reason).then_some(c)
            },
        )
        .await
    }

    /// The pool's condition of `type_` once it has `status`.
    pub async fn pool_condition(&self, pool: &str, type_: &str, status: &str) -> Condition {
        let api = self.pools();
        self.eventually(&format!("pool {pool} {type_}={status}"), 15, || async {
            let p = api.get(pool).await.ok()?;
            let c = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_)?;
            (c.status == status).then_some(c)
        })
        .await
    }

    /// Event reasons recorded for a Service (events.k8s.io/v1), oldest first.
    pub async fn event_reasons(&self, ns: &str, name: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), ns);
        let mut evs: Vec<_> = api
            .list(&Default::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        evs.into_iter()
            .flat_map(|e| {
                let n = e.series.as_ref().map_or(1, |s| s.count.max(1));
                std::iter::repeat_n(e.reason.unwrap_or_default(), n as usize)
            })
            .collect()
    }

    /// Removes the pools and namespaces this `Env` created, on real clusters (the test
    /// API server vanishes with the test).
    pub async fn cleanup(&self) {
        if self.real {
            remove_labelled(&self.client, Some(&self.prefix)).await;
        }
    }
}

impl Drop for Env {
    /// A failed test never reaches `cleanup()`: remove its objects here, so they cannot
    /// disturb the next test on the same cluster.
    fn drop(&mut self) {
        if !self.real || !std::thread::panicking() {
            return;
        }
        // The test's runtime is blocked in this drop, and `self.client` is bound to it:
        // clean up from a fresh runtime with a fresh client.
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for cleanup");
            rt.block_on(async {
                if let Ok(client) = Client::try_default().await {
                    let cleanup = remove_labelled(&client, Some(&prefix));
                    let _ = tokio::time::timeout(Duration::from_secs(20), cleanup).await;
                }
            });
        })
        .join();
    }
}

/// Deletes the test-labelled pools and namespaces, all of them or those named `prefix-*`.
async fn remove_labelled(client: &Client, prefix: Option<&str>) {
    let lp = kube::api::ListParams::default().labels(&format!("{}={}", TEST_LABEL.0, TEST_LABEL.1));
    let ours = |name: &Option<String>| {
        prefix.is_none_or(|p| {
            name.as_deref()
                .is_some_and(|n| n.starts_with(&format!("{p}-")))
        })
    };
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    if let Ok(list) = pools.list(&lp).await {
        for p in list.items.into_iter().filter(|p| ours(&p.metadata.name)) {
            let _ = pools
                .delete(&p.metadata.name.unwrap(), &DeleteParams::default())
                .await;
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Ok(list) = namespaces.list(&lp).await {
        for ns in list.items.into_iter().filter(|n| ours(&n.metadata.name)) {
            let _ = namespaces
                .delete(&ns.metadata.name.unwrap(), &DeleteParams::default())
                .await;
        }
    }
}

pub fn to_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn ips_of(s: &Service) -> Vec<IpAddr> {
    s.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_ref()?.parse().ok())
        .collect()
}

pub fn allocated_condition(s: &Service) -> Option<Condition> {
    s.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ferrolb_crds::conditions::IP_ALLOCATED)
        .cloned()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(to_map(pairs)),
        match_expressions: None,
    }
}

pub fn allocation(f: impl FnOnce(&mut ServiceAllocation)) -> Option<ServiceAllocation> {
    let mut a = ServiceAllocation::default();
    f(&mut a);
    Some(a)
}
