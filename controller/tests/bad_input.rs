//! Bad input, in one table: what admission rejects on a real API server, and what the
//! controller says about every case when an object gets past admission (the test API
//! server applies no CRD schema, so there every case reaches the controller: its own
//! validation is the second line, and it must hold alone).
//!
//! `docs/configuration.md` shows this table between the `bad-input` markers;
//! `docs_table_matches` fails when the two differ (`BLESS=1` rewrites the docs section).

mod support;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::*;

/// Which kind a case creates.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Pool,
    Advertisement,
    Service,
}

/// What the controller writes once it has seen the object.
enum Verdict {
    /// A condition of `type_` with `status`, `reason` and a message containing `message`.
    Condition {
        type_: &'static str,
        status: &'static str,
        reason: &'static str,
        message: &'static str,
    },
    /// The object is valid for the controller: `Ready=True` (the schema is the only limit).
    Ready,
}

struct Case {
    /// What is wrong, as the docs table says it.
    what: &'static str,
    kind: Kind,
    /// The object's `spec` (pools and advertisements) or `metadata.annotations` (Services).
    body: fn() -> Value,
    /// On a real API server: rejected with a message containing this; `None`: accepted.
    admission: Option<&'static str>,
    /// What the controller then reports.
    controller: Verdict,
    /// The example shown in the docs.
    example: &'static str,
}

const fn invalid_pool(message: &'static str) -> Verdict {
    Verdict::Condition {
        type_: "Ready",
        status: "False",
        reason: "Invalid",
        message,
    }
}

const fn invalid_selector(message: &'static str) -> Verdict {
    Verdict::Condition {
        type_: "Ready",
        status: "False",
        reason: "InvalidSelector",
        message,
    }
}

const fn invalid_request(message: &'static str) -> Verdict {
    Verdict::Condition {
        type_: ferrolb_crds::conditions::IP_ALLOCATED,
        status: "False",
        reason: "InvalidRequest",
        message,
    }
}

fn pool(addresses: &[&str]) -> Value {
    json!({"addresses": addresses})
}

fn pool_selecting(selector: Value) -> Value {
    json!({"addresses": ["203.0.113.240/30"], "serviceAllocation": {"serviceSelectors": [selector]}})
}

fn adv_selecting(selector: Value) -> Value {
    json!({"nodeSelectors": [selector]})
}

/// The table. Pools use addresses of 203.0.113.0/24 only (docs/design/lab-addresses.md).
const CASES: &[Case] = &[
    Case {
        what: "empty address list",
        kind: Kind::Pool,
        body: || pool(&[]),
        admission: Some("should have at least 1 items"),
        controller: invalid_pool("at least one entry is required"),
        example: "`addresses: []`",
    },
    Case {
        what: "empty address entry",
        kind: Kind::Pool,
        body: || pool(&[""]),
        admission: Some("should be at least 1 chars long"),
        controller: invalid_pool("empty address entry"),
        example: "`\"\"`",
    },
    Case {
        what: "not an IP",
        kind: Kind::Pool,
        body: || pool(&["300.1.1.1"]),
        admission: Some("\"300.1.1.1\" is not a CIDR, a single IP, or a range"),
        controller: invalid_pool("invalid IP address"),
        example: "`300.1.1.1`",
    },
    Case {
        what: "prefix longer than the family",
        kind: Kind::Pool,
        body: || pool(&["203.0.113.0/33"]),
        admission: Some("is not a CIDR, a single IP, or a range"),
        controller: invalid_pool("invalid prefix length"),
        example: "`203.0.113.0/33`",
    },
    Case {
        what: "CIDR with host bits set",
        kind: Kind::Pool,
        body: || pool(&["203.0.113.250/29"]),
        admission: Some("\"203.0.113.250/29\" has host bits set"),
        controller: invalid_pool("did you mean \"203.0.113.248/29\""),
        example: "`203.0.113.250/29`",
    },
    Case {
        what: "range mixing families",
        kind: Kind::Pool,
        body: || pool(&["203.0.113.1-2001:db8::1"]),
        admission: Some(
            "is not a CIDR, a single IP, or a range FIRST-LAST of two IPs of one family",
        ),
        controller: invalid_pool("range mixes IPv4 start and IPv6 end"),
        example: "`203.0.113.1-2001:db8::1`",
    },
    Case {
        what: "range of three parts",
        kind: Kind::Pool,
        body: || pool(&["203.0.113.1-203.0.113.2-203.0.113.3"]),
        admission: Some("is not a CIDR, a single IP, or a range"),
        controller: invalid_pool("want a CIDR"),
        example: "`203.0.113.1-203.0.113.2-203.0.113.3`",
    },
    Case {
        what: "reversed range",
        kind: Kind::Pool,
        body: || pool(&["203.0.113.20-203.0.113.10"]),
        admission: None,
        controller: invalid_pool("range start 203.0.113.20 is after its end 203.0.113.10"),
        example: "`203.0.113.20-203.0.113.10`",
    },
    Case {
        what: "too many addresses",
        kind: Kind::Pool,
        body: || {
            let ips: Vec<String> = (0..1025).map(|i| format!("2001:db8:7::{i:x}")).collect();
            json!({"addresses": ips})
        },
        admission: Some("must have at most 1024 items"),
        controller: Verdict::Ready,
        example: "1,025 entries",
    },
    Case {
        what: "negative priority",
        kind: Kind::Pool,
        body: || json!({"addresses": ["203.0.113.244/30"], "serviceAllocation": {"priority": -1}}),
        admission: Some("should be greater than or equal to 0"),
        controller: invalid_pool("serviceAllocation.priority must not be negative"),
        example: "`priority: -1`",
    },
    Case {
        what: "unknown selector operator",
        kind: Kind::Pool,
        body: || {
            pool_selecting(
                json!({"matchExpressions": [{"key": "tier", "operator": "in", "values": ["gold"]}]}),
            )
        },
        admission: Some("Unsupported value: \"in\""),
        controller: invalid_pool("unknown operator \"in\""),
        example: "`operator: in`",
    },
    Case {
        what: "In without values",
        kind: Kind::Pool,
        body: || pool_selecting(json!({"matchExpressions": [{"key": "tier", "operator": "In"}]})),
        admission: Some("values must be non-empty for In and NotIn"),
        controller: invalid_pool("needs at least one value"),
        example: "`{key: tier, operator: In}`",
    },
    Case {
        what: "label key no label can have",
        kind: Kind::Pool,
        body: || pool_selecting(json!({"matchLabels": {"bad key!": "x"}})),
        admission: None,
        controller: invalid_pool("label key \"bad key!\" is not a valid label name"),
        example: "`matchLabels: {\"bad key!\": x}`",
    },
    Case {
        what: "Exists with values (advertisement)",
        kind: Kind::Advertisement,
        body: || {
            adv_selecting(
                json!({"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]}),
            )
        },
        admission: Some(
            "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
        ),
        controller: invalid_selector("takes no values"),
        example: "`{key: zone, operator: Exists, values: [a]}`",
    },
    Case {
        what: "unknown operator (advertisement)",
        kind: Kind::Advertisement,
        body: || {
            adv_selecting(
                json!({"matchExpressions": [{"key": "zone", "operator": "Equals", "values": ["a"]}]}),
            )
        },
        admission: Some("Unsupported value: \"Equals\""),
        controller: invalid_selector("unknown operator \"Equals\""),
        example: "`operator: Equals`",
    },
    Case {
        what: "interface name longer than 15",
        kind: Kind::Advertisement,
        body: || json!({"interfaces": ["a-very-long-interface"]}),
        admission: Some("may not be more than 15 bytes"),
        controller: Verdict::Ready,
        example: "`interfaces: [a-very-long-interface]`",
    },
    Case {
        what: "unknown pool name",
        kind: Kind::Advertisement,
        body: || json!({"ipAddressPools": ["no-such-pool"]}),
        admission: None,
        controller: Verdict::Condition {
            type_: "Ready",
            status: "False",
            reason: "UnknownPools",
            message: "no-such-pool",
        },
        example: "`ipAddressPools: [no-such-pool]`",
    },
    Case {
        what: "requested IP that does not parse",
        kind: Kind::Service,
        body: || json!({"ferrolb.io/loadBalancerIPs": "203.0.113.300"}),
        admission: None,
        controller: invalid_request("203.0.113.300"),
        example: "`ferrolb.io/loadBalancerIPs: 203.0.113.300`",
    },
    Case {
        what: "two requested IPs of one family",
        kind: Kind::Service,
        body: || json!({"ferrolb.io/loadBalancerIPs": "203.0.113.1,203.0.113.2"}),
        admission: None,
        controller: invalid_request("at most one IP per family"),
        example: "`ferrolb.io/loadBalancerIPs: 203.0.113.1,203.0.113.2`",
    },
];

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Pool => ApiResource::erase::<ferrolb_crds::IPAddressPool>(&()),
        Kind::Advertisement => ApiResource::erase::<ferrolb_crds::L2Advertisement>(&()),
        Kind::Service => ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
    }
}

/// The object a case creates, named `name` (in `ns` for Services).
fn object(case: &Case, env: &Env, name: &str, ns: &str) -> DynamicObject {
    let ar = resource(case.kind);
    let mut o = DynamicObject::new(name, &ar);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(TEST_LABEL.0.to_string(), TEST_LABEL.1.to_string());
    o.metadata.labels = Some(labels);
    if case.kind == Kind::Service {
        o.metadata.namespace = Some(ns.into());
        let annotations = serde_json::from_value((case.body)()).unwrap();
        o.metadata.annotations = Some(annotations);
        o.data = json!({"spec": serde_json::to_value(env.lb_spec(80)).unwrap()});
    } else {
        o.data = json!({"spec": (case.body)()});
    }
    o
}

fn api(env: &Env, kind: Kind, ns: &str) -> Api<DynamicObject> {
    let ar = resource(kind);
    match kind {
        Kind::Service => Api::namespaced_with(env.client.clone(), ns, &ar),
        _ => Api::all_with(env.client.clone(), &ar),
    }
}

fn condition<'a>(o: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    o.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[tokio::test]
async fn every_bad_input_is_rejected_or_marked() {
    let env = Env::new().await;
    let _c = env.controller("c1");
    let ns = env.namespace("bad-input", &[]).await;
    let mut created = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let name = env.name(&format!("case{i}"));
        let api = api(&env, case.kind, &ns);
        let result = api
            .create(&PostParams::default(), &object(case, &env, &name, &ns))
            .await;
        match (env.is_real(), case.admission, result) {
            (true, Some(message), Err(kube::Error::Api(status))) => {
                assert_eq!(status.code, 422, "{}: {status:?}", case.what);
                assert!(
                    status.message.contains(message),
                    "{}: admission says {:?}, want {message:?}",
                    case.what,
                    status.message
                );
                continue;
            }
            (true, Some(_), Ok(_)) => panic!("{}: the API server accepted it", case.what),
            (_, _, Err(e)) => panic!("{}: create failed: {e}", case.what),
            (_, _, Ok(_)) => created.push((case, name)),
        }
    }
    for (case, name) in created {
        let api = api(&env, case.kind, &ns);
        let (type_, status, reason, message) = match case.controller {
            Verdict::Condition {
                type_,
                status,
                reason,
                message,
            } => (type_, status, reason, message),
            Verdict::Ready => ("Ready", "True", "Ready", ""),
        };
        let c = env
            .eventually(
                &format!(
                    "{}: controller writes {type_}={status} ({reason})",
                    case.what
                ),
                15,
                || async {
                    let o = api.get(&name).await.ok()?;
                    let c = condition(&o, type_)?.clone();
                    (c["status"] == status && c["reason"] == reason).then_some(c)
                },
            )
            .await;
        let got = c["message"].as_str().unwrap_or_default();
        assert!(
            got.contains(message),
            "{}: controller says {got:?}, want {message:?}",
            case.what
        );
    }
    for kind in [Kind::Pool, Kind::Advertisement] {
        let api = api(&env, kind, &ns);
        for (i, _) in CASES.iter().enumerate().filter(|(_, c)| c.kind == kind) {
            let _ = api
                .delete(&env.name(&format!("case{i}")), &Default::default())
                .await;
        }
    }
    env.cleanup().await;
}

/// The docs table, rendered from `CASES`.
fn docs_table() -> String {
    let mut out = String::from(
        "| bad input | example | admission (real API server) | then the controller says |\n\
         | --- | --- | --- | --- |\n",
    );
    for c in CASES {
        let admission = match c.admission {
            Some(m) => format!("rejected: `{}`", m.replace('|', "\\|")),
            None => "accepted".into(),
        };
        let controller = match &c.controller {
            Verdict::Condition {
                type_,
                status,
                reason,
                message,
            } => format!("`{type_}={status}`, reason `{reason}`: `…{message}…`"),
            Verdict::Ready => "`Ready=True` (the schema is the only limit)".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {admission} | {controller} |\n",
            c.what, c.example
        ));
    }
    out
}

#[test]
fn docs_table_matches() {
    const BEGIN: &str = "<!-- bad-input:begin (generated from controller/tests/bad_input.rs) -->\n";
    const END: &str = "<!-- bad-input:end -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (start, end) = (
        doc.find(BEGIN)
            .expect("docs/configuration.md has the bad-input begin marker")
            + BEGIN.len(),
        doc.find(END)
            .expect("docs/configuration.md has the bad-input end marker"),
    );
    let want = docs_table();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &doc[..start], &doc[end..])).unwrap();
        return;
    }
    assert_eq!(
        &doc[start..end],
        want,
        "docs/configuration.md's bad-input table differs from CASES; run with BLESS=1"
    );
}
