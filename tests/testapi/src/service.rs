//! kube-apiserver's rules for a Service's status — the object FerroLB writes most — as
//! v1.33 applies them: the defaulting of `pkg/apis/core/v1/defaults.go`, the typed decoding
//! of `metav1.Condition`, `ValidateLoadBalancerStatus`, and the Service strategy clearing
//! `status.loadBalancer` when the type stops being `LoadBalancer`.
//!
//! ```text
//!  status write ─► decode: a lastTransitionTime that is not RFC 3339 fails (422 / 400)
//!               ─► normalize: ipMode VIP when ip is set, empty ip/hostname dropped,
//!                  every condition gets type/status/lastTransitionTime/reason/message
//!               ─► validate ingress: IP, ipMode, hostname, type LoadBalancer ─► 422 Invalid
//!  spec write   ─► type no longer LoadBalancer ─► status.loadBalancer = {}
//! ```
//!
//! Deliberately not checked, because the real server does not check them either (measured):
//! the content of a Service's `status.conditions` (empty type or reason, a status other than
//! True/False/Unknown, duplicate types, long messages, negative observedGeneration are all
//! stored), duplicate ingress entries, and IP spellings that are valid but not canonical
//! (`::ffff:1.2.3.4`, `2001:DB8::1`, IPv4 octets with leading zeros).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value, json};

use crate::status::{ApiError, Cause};
use crate::util::is_rfc3339;

/// The values `ingress[].ipMode` may take.
const IP_MODES: [&str; 2] = ["Proxy", "VIP"];

/// `spec.type`, defaulted as the real server would (`ClusterIP`).
fn service_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or("ClusterIP")
}

fn ingress_mut(svc: &mut Value) -> Option<&mut Vec<Value>> {
    svc.pointer_mut("/status/loadBalancer/ingress")
        .and_then(Value::as_array_mut)
}

/// The decoding error the real server gives for a condition whose `lastTransitionTime`
/// is not an RFC 3339 string: 422 with a `patch` cause for patches, 400 otherwise.
pub(crate) fn decode_error(svc: &Value, patch: bool) -> Option<ApiError> {
    let conds = svc.pointer("/status/conditions")?.as_array()?;
    let bad = conds
        .iter()
        .filter_map(|c| c.get("lastTransitionTime"))
        .find(|t| !t.is_null() && !t.as_str().is_some_and(is_rfc3339))?;
    let shown = bad.as_str().map_or_else(|| bad.to_string(), str::to_string);
    let why = format!(
        "parsing time \"{shown}\" as \"2006-01-02T15:04:05Z07:00\": cannot parse \"{shown}\" as \"2006\""
    );
    Some(if patch {
        ApiError::invalid_causes(
            "",
            "",
            "",
            vec![Cause::invalid("patch", &json!(svc.to_string()), &why)],
        )
    } else {
        ApiError::bad_request(format!(
            "Service in version \"v1\" cannot be handled as a Service: {why}"
        ))
    })
}

/// What decoding into the typed Service and defaulting do to a written status: every
/// ingress with an `ip` gets `ipMode: VIP` unless it has one, empty `ip`/`hostname` are
/// dropped (omitempty), and each condition carries exactly the `metav1.Condition` fields
/// (`lastTransitionTime: null`, empty strings for missing ones; unknown keys dropped).
pub(crate) fn normalize_status(svc: &mut Value) {
    if let Some(ingress) = ingress_mut(svc) {
        for ing in ingress.iter_mut().filter_map(Value::as_object_mut) {
            for k in ["ip", "hostname", "ipMode"] {
                let empty = k != "ipMode" && ing.get(k).and_then(Value::as_str) == Some("");
                if empty || ing.get(k).is_some_and(Value::is_null) {
                    ing.remove(k);
                }
            }
            if ing.contains_key("ip") && !ing.contains_key("ipMode") {
                ing.insert("ipMode".into(), json!("VIP"));
            }
        }
    }
    if let Some(conds) = svc
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conds.iter_mut() {
            *c = typed_condition(c);
        }
    }
}

fn typed_condition(c: &Value) -> Value {
    let s = |k: &str| json!(c.get(k).and_then(Value::as_str).unwrap_or_default());
    let mut out = Map::new();
    out.insert("type".into(), s("type"));
    out.insert("status".into(), s("status"));
    if let Some(g) = c
        .get("observedGeneration")
        .and_then(Value::as_i64)
        .filter(|g| *g != 0)
    {
        out.insert("observedGeneration".into(), json!(g));
    }
    out.insert(
        "lastTransitionTime".into(),
        c.get("lastTransitionTime").cloned().unwrap_or(Value::Null),
    );
    out.insert("reason".into(), s("reason"));
    out.insert("message".into(), s("message"));
    Value::Object(out)
}

/// Spec rules of a Service that FerroLB's tests run into: `spec.loadBalancerClass` only on
/// type LoadBalancer (the real server answers 422 Forbidden).
pub(crate) fn validate_spec(svc: &Value) -> Vec<Cause> {
    let class = svc
        .pointer("/spec/loadBalancerClass")
        .filter(|c| !c.is_null());
    if class.is_some() && service_type(svc) != "LoadBalancer" {
        return vec![Cause::forbidden(
            "spec.loadBalancerClass",
            "may only be used when `type` is 'LoadBalancer'",
        )];
    }
    Vec::new()
}

/// An events.k8s.io Event's `note` is at most 1 KB (the real server answers 422, and the
/// Event is lost: FerroLB cuts its notes to fit).
pub(crate) fn validate_event(ev: &Value) -> Vec<Cause> {
    match ev.get("note").and_then(Value::as_str) {
        // The real server names the field by its internal name, `message`.
        Some(note) if note.len() > 1024 => vec![Cause::invalid(
            "message",
            &Value::String(String::new()),
            "can have at most 1024 characters",
        )],
        _ => Vec::new(),
    }
}

/// `ValidateLoadBalancerStatus`: every failure of a (normalized) Service's ingress list.
pub(crate) fn validate_status(svc: &Value) -> Vec<Cause> {
    let Some(ingress) = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .filter(|i| !i.is_empty())
    else {
        return Vec::new();
    };
    if service_type(svc) != "LoadBalancer" {
        return vec![Cause::forbidden(
            "status.loadBalancer.ingress",
            "may only be used when `spec.type` is 'LoadBalancer'",
        )];
    }
    let mut out = Vec::new();
    for (i, ing) in ingress.iter().enumerate() {
        let at = |f: &str| format!("status.loadBalancer.ingress[{i}].{f}");
        let ip = ing.get("ip").and_then(Value::as_str).unwrap_or_default();
        if !ip.is_empty() && parse_ip_sloppy(ip).is_none() {
            out.push(Cause::invalid(
                &at("ip"),
                &json!(ip),
                // The real server's text gives a private IPv4 example; this server keeps to
                // the documentation ranges (docs/design/lab-addresses.md). Only the field and reason are compared.
                "must be a valid IP address, (e.g. 203.0.113.7 or 2001:db8::ffff)",
            ));
        }
        match ing.get("ipMode").and_then(Value::as_str) {
            None if !ip.is_empty() => {
                out.push(Cause::required(
                    &at("ipMode"),
                    "must be specified when `ip` is set",
                ));
            }
            Some(_) if ip.is_empty() => out.push(Cause::forbidden(
                &at("ipMode"),
                "may not be specified when `ip` is not set",
            )),
            Some(m) if !IP_MODES.contains(&m) => out.push(Cause::not_supported(
                &at("ipMode"),
                &json!(m),
                &IP_MODES.map(|m| json!(m)),
            )),
            _ => {}
        }
        let host = ing
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !host.is_empty() {
            if let Some(why) = dns1123_subdomain_error(host) {
                out.push(Cause::invalid(&at("hostname"), &json!(host), &why));
            }
            if parse_ip_sloppy(host).is_some() {
                out.push(Cause::invalid(
                    &at("hostname"),
                    &json!(host),
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
    out
}

/// The Service strategy on a spec update: a Service that is no longer of type
/// `LoadBalancer` loses its load-balancer status (conditions stay).
pub(crate) fn clear_lb_status_unless_lb(svc: &mut Value) {
    if service_type(svc) == "LoadBalancer" {
        return;
    }
    if let Some(lb) = svc.pointer_mut("/status/loadBalancer")
        && lb.as_object().is_some_and(|m| !m.is_empty())
    {
        *lb = json!({});
    }
}

/// `IsDNS1123Subdomain`'s complaint about `s`, if any.
fn dns1123_subdomain_error(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".to_string());
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    (!s.split('.').all(label_ok)).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
         and must start and end with an alphanumeric character (e.g. 'example.com', regex used for \
         validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            .to_string()
    })
}

/// Go's `netutils.ParseIPSloppy`, which the real server uses for legacy IP fields: like
/// `net.ParseIP` (no zones, no prefixes, no spaces) except that IPv4 octets may carry
/// leading zeros, read as decimal (`010.1.2.3` is 10.1.2.3).
pub(crate) fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if !s.contains(':') {
        return parse_ipv4_sloppy(s).map(IpAddr::V4);
    }
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(a));
    }
    // A trailing dotted quad (`::ffff:010.1.2.3`) may carry leading zeros too.
    let (head, tail) = s.rsplit_once(':')?;
    let v4 = parse_ipv4_sloppy(tail).filter(|_| tail.contains('.'))?;
    format!("{head}:{v4}")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let n = p.bytes().try_fold(0u32, |n, c| {
            let n = n * 10 + u32::from(c - b'0');
            (n <= 255).then_some(n)
        })?;
        *o = u8::try_from(n).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(ingress: Value) -> Value {
        let mut s = json!({
            "metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": ingress}},
        });
        normalize_status(&mut s);
        s
    }

    fn causes(ingress: Value) -> Vec<(String, &'static str)> {
        validate_status(&lb(ingress))
            .into_iter()
            .map(|c| (c.field, c.reason))
            .collect()
    }

    #[test]
    fn sloppy_ip_parsing_matches_go() {
        for ok in [
            "203.0.113.1",
            "010.001.002.003",
            "0.0.0.0",
            "::",
            "2001:DB8::1",
            "2001:db8:0:0::1",
            "::ffff:1.2.3.4",
            "::ffff:001.2.3.4",
        ] {
            assert!(parse_ip_sloppy(ok).is_some(), "{ok}");
        }
        assert_eq!(
            parse_ip_sloppy("010.001.002.003"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        );
        for bad in [
            "",
            "not-an-ip",
            "example.com",
            "1.2.3.4/32",
            " 1.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "fe80::1%eth0",
            "1::2::3",
        ] {
            assert!(parse_ip_sloppy(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ingress_ips_must_parse_and_ip_mode_is_defaulted() {
        assert!(causes(json!([{"ip": "203.0.113.1"}, {"ip": "::ffff:1.2.3.4"}])).is_empty());
        let s = lb(json!([{"ip": "203.0.113.1"}, {"ip": ""}, {"hostname": "lb.example.com"}]));
        assert_eq!(
            s["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "203.0.113.1", "ipMode": "VIP"}, {}, {"hostname": "lb.example.com"}])
        );
        let c = validate_status(&lb(json!([{"ip": "not-an-ip"}])));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "status.loadBalancer.ingress[0].ip");
        assert_eq!(c[0].reason, "FieldValueInvalid");
        assert_eq!(
            c[0].message,
            "Invalid value: \"not-an-ip\": must be a valid IP address, (e.g. 203.0.113.7 or 2001:db8::ffff)"
        );
    }

    #[test]
    fn ip_mode_rules() {
        assert!(causes(json!([{"ip": "203.0.113.1", "ipMode": "Proxy"}])).is_empty());
        let c = validate_status(&lb(json!([{"ip": "203.0.113.1", "ipMode": "Bogus"}])));
        assert_eq!(
            (c[0].field.as_str(), c[0].reason, c[0].message.as_str()),
            (
                "status.loadBalancer.ingress[0].ipMode",
                "FieldValueNotSupported",
                "Unsupported value: \"Bogus\": supported values: \"Proxy\", \"VIP\""
            )
        );
        assert_eq!(
            causes(json!([{"hostname": "lb.example.com", "ipMode": "VIP"}])),
            [(
                "status.loadBalancer.ingress[0].ipMode".to_string(),
                "FieldValueForbidden"
            )]
        );
    }

    #[test]
    fn hostnames_are_dns_names_not_ips() {
        assert!(causes(json!([{"hostname": "lb.example.com"}])).is_empty());
        for bad in ["1.2.3.4", "Bad_Host", "a..b", "-a.b"] {
            assert_eq!(
                causes(json!([{ "hostname": bad }])),
                [(
                    "status.loadBalancer.ingress[0].hostname".to_string(),
                    "FieldValueInvalid"
                )],
                "{bad}"
            );
        }
    }

    #[test]
    fn ingress_needs_type_load_balancer() {
        let mut s = lb(json!([{"ip": "203.0.113.1"}]));
        s["spec"] = json!({});
        let c = validate_status(&s);
        assert_eq!(
            (c[0].field.as_str(), c[0].reason),
            ("status.loadBalancer.ingress", "FieldValueForbidden")
        );
        clear_lb_status_unless_lb(&mut s);
        assert_eq!(s["status"]["loadBalancer"], json!({}));
        let mut s = lb(json!([{"ip": "203.0.113.1"}]));
        clear_lb_status_unless_lb(&mut s);
        assert_eq!(
            s["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.1"
        );
    }

    #[test]
    fn conditions_are_stored_as_typed_not_validated() {
        let mut s = json!({"spec": {"type": "LoadBalancer"}, "status": {"conditions": [
            {"type": "x/A", "status": "Maybe", "extra": 1, "observedGeneration": 0},
            {"type": "x/B", "status": "True", "reason": "R", "message": "m",
             "observedGeneration": 3, "lastTransitionTime": "2025-01-01T00:00:00Z"},
        ]}});
        normalize_status(&mut s);
        assert_eq!(
            s["status"]["conditions"],
            json!([
                {"type": "x/A", "status": "Maybe", "lastTransitionTime": null, "reason": "", "message": ""},
                {"type": "x/B", "status": "True", "observedGeneration": 3,
                 "lastTransitionTime": "2025-01-01T00:00:00Z", "reason": "R", "message": "m"},
            ])
        );
        assert!(validate_status(&s).is_empty());
        assert!(decode_error(&s, true).is_none());
    }

    #[test]
    fn a_bad_transition_time_fails_decoding() {
        let s =
            json!({"status": {"conditions": [{"type": "A", "lastTransitionTime": "yesterday"}]}});
        let e = decode_error(&s, true).unwrap();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(e.to_status()["details"]["causes"][0]["field"], "patch");
        let e = decode_error(&s, false).unwrap();
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_class_only_on_load_balancers() {
        let lb = json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "x/y"}});
        assert!(validate_spec(&lb).is_empty());
        let cip = json!({"spec": {"type": "ClusterIP", "loadBalancerClass": "x/y"}});
        assert_eq!(validate_spec(&cip).len(), 1);
        assert!(validate_spec(&json!({"spec": {}})).is_empty());
    }

    #[test]
    fn event_notes_fit_in_1_kb() {
        assert!(validate_event(&json!({"note": "x".repeat(1024)})).is_empty());
        assert_eq!(validate_event(&json!({"note": "x".repeat(1025)})).len(), 1);
    }
}
