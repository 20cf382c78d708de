//! CustomResourceDefinition schemas: what kube-apiserver does to a custom object between
//! decoding a write and storing it, once a CRD for its resource is registered (created
//! through `/apis/apiextensions.k8s.io/v1/customresourcedefinitions`, as the lab and
//! `kubectl apply -f deploy/crds/` do). Without a CRD the object is stored as sent.
//!
//! ```text
//!  write ─► prune: drop fields the schema does not declare (root apiVersion/kind/metadata kept)
//!        ─► default: fill `default:` values of absent fields; a null in a non-nullable
//!           field is dropped, then defaulted
//!        ─► validate: type, format date-time, enum, required, min/max (Length, Items,
//!           imum), maxProperties ─► 422 Invalid listing every cause
//! ```
//!
//! A status write validates only `.status`, against the status schema (the real server's
//! messages then name paths relative to it: `conditions[0].reason in body`).
//!
//! Simplifications: CEL rules (`x-kubernetes-validations`) are not evaluated — when the
//! schema has any and a blocking check fails (type, enum, required, too long, too many),
//! the real server's "some validation rules were not checked" cause is added, as it
//! does; no validation ratcheting (unchanged invalid
//! values fail again); no `anyOf`/`oneOf`/`allOf`/`not`, `pattern`, `multipleOf`,
//! `uniqueItems`, list-type uniqueness or formats other than `date-time`; `metadata` is
//! neither pruned nor validated; embedded resources are treated as plain objects.

use serde_json::{Map, Value, json};

use crate::status::Cause;
use crate::util::is_rfc3339;

/// The `openAPIV3Schema` of `version` in a CRD object, if it declares one.
pub(crate) fn schema_for<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(version))?
        .pointer("/schema/openAPIV3Schema")
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The schema of an object's field `key`: a declared property, else `additionalProperties`.
fn child<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    properties(schema)
        .and_then(|p| p.get(key))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

fn keeps_unknown(schema: &Value) -> bool {
    flag(schema, "x-kubernetes-preserve-unknown-fields")
        || schema
            .get("additionalProperties")
            .is_some_and(|a| a.is_object() || a == &json!(true))
}

/// Prunes unknown fields, then applies defaults, as the real server does on decoding.
pub(crate) fn prune_and_default(schema: &Value, obj: &mut Value) {
    prune(schema, obj, true);
    default(schema, obj);
}

fn prune(schema: &Value, v: &mut Value, root: bool) {
    match v {
        Value::Object(m) => {
            let type_meta = |k: &str| root && matches!(k, "apiVersion" | "kind" | "metadata");
            if !keeps_unknown(schema) {
                m.retain(|k, _| {
                    type_meta(k) || properties(schema).is_some_and(|p| p.contains_key(k))
                });
            }
            for (k, c) in m.iter_mut() {
                if let Some(s) = child(schema, k).filter(|_| !type_meta(k)) {
                    prune(s, c, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                items.iter_mut().for_each(|x| prune(s, x, false));
            }
        }
        _ => {}
    }
}

fn default(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, s) in properties(schema).into_iter().flatten() {
                let missing = match m.get(k) {
                    None => true,
                    Some(Value::Null) if !flag(s, "nullable") => {
                        m.remove(k);
                        true
                    }
                    Some(_) => false,
                };
                if missing && let Some(d) = s.get("default") {
                    m.insert(k.clone(), d.clone());
                }
            }
            for (k, c) in m.iter_mut() {
                if let Some(s) = child(schema, k) {
                    default(s, c);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                items.iter_mut().for_each(|x| default(s, x));
            }
        }
        _ => {}
    }
}

/// Every schema violation of `obj` (only of its `.status` when `status_only`), as the
/// causes of a 422.
pub(crate) fn validate(schema: &Value, obj: &Value, status_only: bool) -> Vec<Cause> {
    let mut out = Vec::new();
    if status_only {
        if let (Some(s), Some(v)) = (child(schema, "status"), obj.get("status")) {
            check(s, v, &Path::status_root(), &mut out);
        }
    } else {
        check(schema, obj, &Path::default(), &mut out);
    }
    // With CEL rules in the schema, a blocking error stops them from running and says so.
    let blocking = |c: &Cause| {
        matches!(
            c.reason,
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    };
    if out.iter().any(blocking) && has_rules(schema) {
        out.push(Cause::invalid(
            "<nil>",
            &json!("null"),
            "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ));
    }
    out
}

fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

/// Where a value sits: `field` for the cause, `body` for the message ("X in body ...").
#[derive(Debug, Clone, Default)]
struct Path {
    field: String,
    body: String,
}

impl Path {
    fn status_root() -> Self {
        Self {
            field: "status".into(),
            body: String::new(),
        }
    }

    fn key(&self, k: &str) -> Self {
        let join = |p: &str| {
            if p.is_empty() {
                k.to_string()
            } else {
                format!("{p}.{k}")
            }
        };
        Self {
            field: join(&self.field),
            body: join(&self.body),
        }
    }

    fn index(&self, i: usize) -> Self {
        Self {
            field: format!("{}[{i}]", self.field),
            body: format!("{}[{i}]", self.body),
        }
    }
}

/// The JSON type name the real server reports for a value.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(want: &str, v: &Value) -> bool {
    match want {
        "number" => v.is_number(),
        other => type_of(v) == other,
    }
}

/// A bound as the message prints it (`0`, not `0.0`).
fn bound(n: &Value) -> String {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => n.to_string(),
    }
}

fn check(schema: &Value, v: &Value, at: &Path, out: &mut Vec<Cause>) {
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if v.is_null() && flag(schema, "nullable") {
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str)
        && !int_or_string
        && !type_matches(want, v)
    {
        let got = type_of(v);
        out.push(Cause::type_invalid(
            &at.field,
            &json!(got),
            &format!("{} in body must be of type {want}: \"{got}\"", at.body),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        out.push(Cause::not_supported(&at.field, v, allowed));
    }
    let num = |k: &str| schema.get(k).filter(|n| n.is_number());
    let count = |k: &str| schema.get(k).and_then(Value::as_u64);
    match v {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = count("maxLength").filter(|m| len > *m) {
                out.push(Cause::too_long(&at.field, max));
            }
            if let Some(min) = count("minLength").filter(|m| len < *m) {
                out.push(Cause::invalid(
                    &at.field,
                    v,
                    &format!("{} in body should be at least {min} chars long", at.body),
                ));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time") && !is_rfc3339(s) {
                out.push(Cause::type_invalid(
                    &at.field,
                    v,
                    &format!("{} in body must be of type date-time: {v}", at.body),
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let exclusive = |k: &str| flag(schema, k);
            if let Some(min) = num("minimum") {
                let m = min.as_f64().unwrap_or_default();
                let (bad, rel) = if exclusive("exclusiveMinimum") {
                    (x <= m, "greater than")
                } else {
                    (x < m, "greater than or equal to")
                };
                if bad {
                    out.push(Cause::invalid(
                        &at.field,
                        v,
                        &format!("{} in body should be {rel} {}", at.body, bound(min)),
                    ));
                }
            }
            if let Some(max) = num("maximum") {
                let m = max.as_f64().unwrap_or_default();
                let (bad, rel) = if exclusive("exclusiveMaximum") {
                    (x >= m, "less than")
                } else {
                    (x > m, "less than or equal to")
                };
                if bad {
                    out.push(Cause::invalid(
                        &at.field,
                        v,
                        &format!("{} in body should be {rel} {}", at.body, bound(max)),
                    ));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len();
            if let Some(min) = count("minItems").filter(|m| (len as u64) < *m) {
                out.push(Cause::invalid(
                    &at.field,
                    &json!(len),
                    &format!("{} in body should have at least {min} items", at.body),
                ));
            }
            if let Some(max) = count("maxItems").filter(|m| len as u64 > *m) {
                out.push(Cause::too_many(&at.field, len, max));
            }
            if let Some(s) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    check(s, x, &at.index(i), out);
                }
            }
        }
        Value::Object(m) => {
            for k in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(k) {
                    out.push(Cause::required(&at.key(k).field, ""));
                }
            }
            if let Some(max) = count("maxProperties").filter(|mx| m.len() as u64 > *mx) {
                out.push(Cause::too_many(&at.field, m.len(), max));
            }
            for (k, c) in m {
                if let Some(s) = child(schema, k) {
                    check(s, c, &at.key(k), out);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cut-down IPAddressPool schema with the shapes of deploy/crds.
    fn pool_schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["addresses"],
                    "properties": {
                        "addresses": {
                            "type": "array", "minItems": 1, "maxItems": 2,
                            "items": {"type": "string", "minLength": 1, "maxLength": 10,
                                      "x-kubernetes-validations": [{"rule": "isIP(self)"}]}
                        },
                        "autoAssign": {"type": "boolean", "default": true},
                        "avoidBuggyIPs": {"type": "boolean", "default": false},
                        "serviceAllocation": {
                            "type": "object", "nullable": true,
                            "properties": {
                                "priority": {"type": "integer", "minimum": 0.0, "nullable": true},
                                "selectors": {"type": "array", "items": {"type": "object",
                                    "properties": {"operator": {"type": "string", "enum": ["In", "NotIn"]}}}},
                                "labels": {"type": "object", "maxProperties": 1,
                                           "additionalProperties": {"type": "string"}}
                            }
                        }
                    }
                },
                "status": {
                    "type": "object", "nullable": true,
                    "properties": {
                        "assignedIPv4": {"type": "integer", "default": 0},
                        "conditions": {"type": "array", "items": {
                            "type": "object",
                            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
                            "properties": {
                                "lastTransitionTime": {"type": "string", "format": "date-time"},
                                "message": {"type": "string"}, "reason": {"type": "string"},
                                "status": {"type": "string"}, "type": {"type": "string"}
                            }
                        }}
                    }
                }
            }
        })
    }

    fn fields(c: &[Cause]) -> Vec<(&str, &str)> {
        c.iter().map(|c| (c.field.as_str(), c.reason)).collect()
    }

    #[test]
    fn finds_the_served_version() {
        let crd = json!({"spec": {"versions": [
            {"name": "v1alpha1", "schema": {"openAPIV3Schema": {"type": "object"}}}
        ]}});
        assert_eq!(
            schema_for(&crd, "v1alpha1"),
            Some(&json!({"type": "object"}))
        );
        assert_eq!(schema_for(&crd, "v1"), None);
    }

    #[test]
    fn prunes_unknown_fields_and_applies_defaults() {
        let mut o = json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
            "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"addresses": ["203.0.113.1"], "bogus": 1, "avoidBuggyIPs": null,
                     "serviceAllocation": {"priority": null, "labels": {"x": "y"}}},
            "extra": true,
        });
        prune_and_default(&pool_schema(), &mut o);
        assert_eq!(
            o,
            json!({
                "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPAddressPool",
                "metadata": {"name": "p", "labels": {"a": "b"}},
                "spec": {"addresses": ["203.0.113.1"], "autoAssign": true, "avoidBuggyIPs": false,
                         "serviceAllocation": {"priority": null, "labels": {"x": "y"}}},
            })
        );
        let mut s = json!({"status": {"conditions": []}, "spec": {"addresses": ["x"]}});
        prune_and_default(&pool_schema(), &mut s);
        assert_eq!(s["status"], json!({"assignedIPv4": 0, "conditions": []}));
    }

    #[test]
    fn valid_objects_pass() {
        let o = json!({"metadata": {"name": "p"}, "spec": {"addresses": ["a"], "autoAssign": false,
            "serviceAllocation": {"priority": null}}});
        assert!(validate(&pool_schema(), &o, false).is_empty());
    }

    #[test]
    fn reports_each_violation_like_the_real_server() {
        let o = json!({"spec": {
            "addresses": ["12345678901"], "autoAssign": "yes",
            "serviceAllocation": {"priority": -1, "selectors": [{"operator": "Bad"}],
                                  "labels": {"a": "1", "b": "2"}}
        }});
        let c = validate(&pool_schema(), &o, false);
        assert_eq!(
            fields(&c),
            [
                ("spec.addresses[0]", "FieldValueTooLong"),
                ("spec.autoAssign", "FieldValueTypeInvalid"),
                ("spec.serviceAllocation.labels", "FieldValueTooMany"),
                ("spec.serviceAllocation.priority", "FieldValueInvalid"),
                (
                    "spec.serviceAllocation.selectors[0].operator",
                    "FieldValueNotSupported"
                ),
                ("<nil>", "FieldValueInvalid"),
            ]
        );
        assert_eq!(c[0].message, "Too long: may not be more than 10 bytes");
        assert_eq!(
            c[1].message,
            "Invalid value: \"string\": spec.autoAssign in body must be of type boolean: \"string\""
        );
        assert_eq!(
            c[3].message,
            "Invalid value: -1: spec.serviceAllocation.priority in body should be greater than or equal to 0"
        );
        assert_eq!(
            c[4].message,
            "Unsupported value: \"Bad\": supported values: \"In\", \"NotIn\""
        );
        let c = validate(&pool_schema(), &json!({"spec": {"addresses": []}}), false);
        assert_eq!(
            c[0].message,
            "Invalid value: 0: spec.addresses in body should have at least 1 items"
        );
        assert_eq!(
            c.len(),
            1,
            "a non-blocking error lets CEL run: no extra cause"
        );
        let c = validate(
            &pool_schema(),
            &json!({"spec": {"addresses": ["a", "b", "c"]}}),
            false,
        );
        assert_eq!(c[0].message, "Too many: 3: must have at most 2 items");
        assert_eq!(
            fields(&validate(&pool_schema(), &json!({"metadata": {}}), false)),
            [
                ("spec", "FieldValueRequired"),
                ("<nil>", "FieldValueInvalid")
            ]
        );
    }

    #[test]
    fn status_writes_check_only_the_status() {
        let o = json!({"spec": {"addresses": []}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "yesterday"}
        ]}});
        let c = validate(&pool_schema(), &o, true);
        assert_eq!(
            fields(&c),
            [
                ("status.conditions[0].message", "FieldValueRequired"),
                ("status.conditions[0].reason", "FieldValueRequired"),
                (
                    "status.conditions[0].lastTransitionTime",
                    "FieldValueTypeInvalid"
                ),
                ("<nil>", "FieldValueInvalid"),
            ]
        );
        assert_eq!(
            c[2].message,
            "Invalid value: \"yesterday\": conditions[0].lastTransitionTime in body must be of type date-time: \"yesterday\""
        );
        assert!(validate(&pool_schema(), &json!({"spec": {}}), true).is_empty());
    }
}
