//! URL path → route. Scope is inferred from the path form: a path with
//! `namespaces/{ns}/` is namespaced, anything else is cluster-wide.
//!
//! ```text
//! /api/v1/{plural}[/{name}[/{sub}]]                    cluster-scoped or all-namespaces
//! /api/v1/namespaces/{ns}/{plural}[/{name}[/{sub}]]    namespaced
//! /apis/{group}/{version}/…                            same shapes for groups
//! /api/v1/namespaces/{name}[/status]                   a Namespace itself
//! ```

/// Group, version and plural resource name: the storage bucket of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Gvr {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Plural resource name, e.g. `services`.
    pub plural: String,
}

impl Gvr {
    /// `apiVersion` as objects carry it (`v1`, `coordination.k8s.io/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether the resource has a `/status` subresource. Simplification: every resource
    /// has one except a few known kinds whose objects have no status.
    pub fn has_status(&self) -> bool {
        !matches!(
            self.plural.as_str(),
            "events"
                | "leases"
                | "endpointslices"
                | "endpoints"
                | "secrets"
                | "configmaps"
                | "serviceaccounts"
                | "roles"
                | "rolebindings"
                | "clusterroles"
                | "clusterrolebindings"
        )
    }

    /// Whether objects carry `metadata.generation` (set to 1 on create, bumped on spec
    /// changes). kube-apiserver sets it for custom resources and most group kinds, but not
    /// for core kinds other than Pods (Services, Nodes, Namespaces, ConfigMaps have none),
    /// nor for Leases, Events and RBAC objects. FerroLB copies a Service's generation into
    /// its conditions' `observedGeneration`, so a fake that invents one changes its writes.
    pub fn tracks_generation(&self) -> bool {
        match self.group.as_str() {
            "" => self.plural == "pods",
            "coordination.k8s.io" | "events.k8s.io" | "rbac.authorization.k8s.io" => false,
            _ => true,
        }
    }

    /// True for core `namespaces` (whose deletion cascades to their contents).
    pub fn is_namespaces(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }
}

/// A request for a resource collection, an object or an object's subresource.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourcePath {
    /// The resource.
    pub gvr: Gvr,
    /// `Some(ns)` for namespaced paths, `None` for cluster-wide ones.
    pub namespace: Option<String>,
    /// Object name, `None` for the collection.
    pub name: Option<String>,
    /// Subresource such as `status`.
    pub subresource: Option<String>,
}

/// What a URL path addresses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Route {
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz`.
    Health,
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/api/v1` or `/apis/{group}/{version}`: (group, version).
    Resources(String, String),
    /// A resource path.
    Resource(ResourcePath),
    /// Anything else.
    Unknown,
}

/// Parses a URL path (without query) into a [`Route`].
pub(crate) fn parse(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["api", v] => Route::Resources(String::new(), (*v).to_string()),
        ["apis", g, v] => Route::Resources((*g).to_string(), (*v).to_string()),
        ["api", v, rest @ ..] => resource("", v, rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Route::Unknown,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let gvr = |plural: &str| Gvr {
        group: group.to_string(),
        version: version.to_string(),
        plural: plural.to_string(),
    };
    let s = |x: &str| Some(x.to_string());
    let (gvr, namespace, name, subresource) = match rest {
        // A Namespace object's own subresources: /api/v1/namespaces/{name}/status|finalize.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            (gvr("namespaces"), None, s(name), s(sub))
        }
        ["namespaces", ns, plural] => (gvr(plural), s(ns), None, None),
        ["namespaces", ns, plural, name] => (gvr(plural), s(ns), s(name), None),
        ["namespaces", ns, plural, name, sub] => (gvr(plural), s(ns), s(name), s(sub)),
        [plural] => (gvr(plural), None, None, None),
        [plural, name] => (gvr(plural), None, s(name), None),
        [plural, name, sub] => (gvr(plural), None, s(name), s(sub)),
        _ => return Route::Unknown,
    };
    if gvr.plural.is_empty()
        || namespace.as_deref() == Some("")
        || name.as_deref() == Some("")
        || subresource.as_deref() == Some("")
    {
        return Route::Unknown;
    }
    Route::Resource(ResourcePath {
        gvr,
        namespace,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(path: &str) -> ResourcePath {
        match parse(path) {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn core_and_group_paths() {
        let r = rp("/api/v1/namespaces/default/services/web/status");
        assert_eq!(r.gvr.plural, "services");
        assert_eq!(r.gvr.api_version(), "v1");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("status"));

        let r = rp("/api/v1/services");
        assert_eq!((r.namespace, r.name), (None, None));

        let r = rp("/api/v1/nodes/n1");
        assert_eq!(
            (r.gvr.plural.as_str(), r.name.as_deref()),
            ("nodes", Some("n1"))
        );

        let r = rp("/apis/ferrolb.io/v1alpha1/ipaddresspools/p/status");
        assert_eq!(r.gvr.api_version(), "ferrolb.io/v1alpha1");
        assert_eq!(r.subresource.as_deref(), Some("status"));

        let r = rp("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases");
        assert_eq!(r.namespace.as_deref(), Some("kube-system"));
        assert!(r.name.is_none());
    }

    #[test]
    fn namespaces_are_objects_too() {
        let r = rp("/api/v1/namespaces/default");
        assert_eq!(r.gvr.plural, "namespaces");
        assert_eq!((r.namespace, r.name.as_deref()), (None, Some("default")));
        let r = rp("/api/v1/namespaces/default/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = rp("/api/v1/namespaces/default/pods");
        assert_eq!(r.gvr.plural, "pods");
        assert_eq!(r.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn other_routes() {
        assert_eq!(parse("/version"), Route::Version);
        assert_eq!(parse("/api"), Route::CoreVersions);
        assert_eq!(parse("/apis"), Route::Groups);
        assert_eq!(
            parse("/api/v1"),
            Route::Resources(String::new(), "v1".into())
        );
        assert_eq!(parse("/healthz"), Route::Health);
        assert_eq!(parse("/nope"), Route::Unknown);
        assert_eq!(parse("/api/v1/a/b/c/d/e/f/g"), Route::Unknown);
        assert!(!rp("/api/v1/namespaces/x/configmaps").gvr.has_status());
        assert!(rp("/api/v1/services").gvr.has_status());
        assert!(!rp("/api/v1/services").gvr.tracks_generation());
        assert!(
            !rp("/apis/coordination.k8s.io/v1/leases")
                .gvr
                .tracks_generation()
        );
        assert!(rp("/api/v1/pods").gvr.tracks_generation());
        assert!(
            rp("/apis/discovery.k8s.io/v1/endpointslices")
                .gvr
                .tracks_generation()
        );
        assert!(
            rp("/apis/ferrolb.io/v1alpha1/ipaddresspools")
                .gvr
                .tracks_generation()
        );
    }
}
