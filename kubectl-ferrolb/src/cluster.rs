//! The thin shell: reads what the reports need from the API server. No decisions here.

use anyhow::Context as _;
use ferrolb_crds::{IPAddressPool, L2Advertisement};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::Value;

use crate::migrate::METALLB_GROUP;
use crate::model::Snapshot;

/// How to reach the cluster (kubectl passes no flags to plugins; `KUBECONFIG` works too).
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// A kubeconfig file instead of `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// A context of that kubeconfig instead of its current one.
    pub context: Option<String>,
}

/// A client for the target, and its default namespace.
pub async fn client(t: &Target) -> anyhow::Result<Client> {
    let opts = KubeConfigOptions {
        context: t.context.clone(),
        ..Default::default()
    };
    let config = match &t.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &opts).await?
        }
        None if t.context.is_some() => Config::from_kubeconfig(&opts).await?,
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// `Api::list` with a message that says what could not be read.
async fn list<K>(api: Api<K>, what: &str) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "{what}: not found on this API server (are FerroLB's CRDs installed? \
             kubectl apply --server-side -k deploy/crds)"
        ),
        Err(e) => Err(e).with_context(|| format!("listing {what}")),
    }
}

/// Everything `status` and `explain` read. EndpointSlices only of `slices_namespace`
/// when given (explain needs one Service's), else none.
pub async fn snapshot(
    client: &Client,
    speaker_namespace: &str,
    lb_class: &str,
    slices_namespace: Option<&str>,
) -> anyhow::Result<Snapshot> {
    let c = client.clone();
    Ok(Snapshot {
        pools: list(
            Api::<IPAddressPool>::all(c.clone()),
            "ipaddresspools.ferrolb.io",
        )
        .await?,
        advertisements: list(
            Api::<L2Advertisement>::all(c.clone()),
            "l2advertisements.ferrolb.io",
        )
        .await?,
        services: list(Api::<Service>::all(c.clone()), "services").await?,
        namespaces: list(Api::<Namespace>::all(c.clone()), "namespaces").await?,
        nodes: list(Api::<Node>::all(c.clone()), "nodes").await?,
        leases: list(
            Api::<Lease>::namespaced(c.clone(), speaker_namespace),
            "leases",
        )
        .await?,
        reports: list(
            Api::<ferrolb_crds::NodeAnnouncement>::all(c.clone()),
            "nodeannouncements.ferrolb.io",
        )
        .await?,
        slices: match slices_namespace {
            Some(ns) => list(Api::<EndpointSlice>::namespaced(c, ns), "endpointslices").await?,
            None => Vec::new(),
        },
        lb_class: lb_class.to_owned(),
    })
}

/// What `migrate --check` reads besides the pools: Services and Namespaces.
pub async fn services(client: &Client, lb_class: &str) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        services: list(Api::<Service>::all(client.clone()), "services").await?,
        namespaces: list(Api::<Namespace>::all(client.clone()), "namespaces").await?,
        lb_class: lb_class.to_owned(),
        ..Default::default()
    })
}

/// MetalLB's objects of one kind in every namespace; `Ok(None)` when the kind is unknown.
async fn metallb_kind(client: &Client, kind: &str) -> anyhow::Result<Option<Vec<Value>>> {
    let gvk = GroupVersionKind::gvk(METALLB_GROUP, "v1beta1", kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    match api.list(&ListParams::default()).await {
        Ok(l) => Ok(Some(
            l.items
                .into_iter()
                .map(|mut o| {
                    o.types = Some(kube::api::TypeMeta {
                        api_version: format!("{METALLB_GROUP}/v1beta1"),
                        kind: kind.to_owned(),
                    });
                    serde_json::to_value(o)
                })
                .collect::<Result<_, _>>()?,
        )),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e).with_context(|| format!("listing {kind}s.{METALLB_GROUP}")),
    }
}

/// MetalLB's pools and L2 advertisements (and BGP objects, to report them) from the cluster.
pub async fn metallb_objects(client: &Client) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for kind in ["IPAddressPool", "L2Advertisement"] {
        match metallb_kind(client, kind).await? {
            Some(items) => out.extend(items),
            None => anyhow::bail!(
                "MetalLB's {kind} (metallb.io/v1beta1) is not installed in this cluster; \
                 convert from files instead: kubectl ferrolb migrate -f FILE"
            ),
        }
    }
    for kind in ["BGPAdvertisement", "BGPPeer"] {
        if let Ok(Some(items)) = metallb_kind(client, kind).await {
            out.extend(items);
        }
    }
    Ok(out)
}
