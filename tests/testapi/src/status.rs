//! `Status` failure objects shaped like kube-apiserver's (`k8s.io/apimachinery/pkg/api/errors`).
//!
//! Every error the fake returns is one of these, so kube-rs surfaces them as
//! `kube::Error::Api(Status)` with the same `code`/`reason` a real cluster gives.

use serde_json::{Value, json};

/// One API failure: HTTP code, machine reason, human message and optional details.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the real server fills it.
    pub details: Option<Value>,
    /// `Retry-After` header seconds (429).
    pub retry_after: Option<u64>,
}

/// What a resource is called in error messages and details (`services`, `ipaddresspools.ferrolb.io`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Res<'a> {
    /// API group, empty for core.
    pub group: &'a str,
    /// Plural resource name.
    pub plural: &'a str,
}

impl Res<'_> {
    /// `plural[.group]`, as the real server prints a GroupResource.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `details` object naming the object and its resource.
    fn details(&self, name: &str) -> Value {
        let mut d = json!({ "name": name, "kind": self.plural });
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

/// One entry of `Status.details.causes`: a field path, a machine reason and the text
/// `field.Error.ErrorBody()` renders, so 422 bodies read like kube-apiserver's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cause {
    /// Field path, e.g. `status.loadBalancer.ingress[0].ip` (`<nil>` for none).
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// The body after the field, e.g. `Invalid value: "x": must be a valid IP address`.
    pub message: String,
}

/// A rejected value as Go's field errors print it: strings quoted, numbers bare.
fn show(v: &Value) -> String {
    v.to_string()
}

impl Cause {
    /// `field.Invalid`: the value is malformed.
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self::with(
            field,
            "FieldValueInvalid",
            format!("Invalid value: {}: {detail}", show(value)),
        )
    }

    /// `field.TypeInvalid`: the value has the wrong JSON type or format.
    pub fn type_invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self::with(
            field,
            "FieldValueTypeInvalid",
            format!("Invalid value: {}: {detail}", show(value)),
        )
    }

    /// `field.Required`: the field is missing; `detail` may be empty.
    pub fn required(field: &str, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self::with(field, "FieldValueRequired", message)
    }

    /// `field.Forbidden`: the field may not be set here.
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::with(field, "FieldValueForbidden", format!("Forbidden: {detail}"))
    }

    /// `field.NotSupported`: the value is not one of an enumeration.
    pub fn not_supported(field: &str, value: &Value, supported: &[Value]) -> Self {
        let list: Vec<String> = supported.iter().map(show).collect();
        Self::with(
            field,
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                list.join(", ")
            ),
        )
    }

    /// `field.TooLong`: a string longer than `max` bytes.
    pub fn too_long(field: &str, max: u64) -> Self {
        Self::with(
            field,
            "FieldValueTooLong",
            format!("Too long: may not be more than {max} bytes"),
        )
    }

    /// `field.TooMany`: a list or map with more than `max` entries.
    pub fn too_many(field: &str, actual: usize, max: u64) -> Self {
        Self::with(
            field,
            "FieldValueTooMany",
            format!("Too many: {actual}: must have at most {max} items"),
        )
    }

    fn with(field: &str, reason: &'static str, message: String) -> Self {
        Self {
            field: field.to_string(),
            reason,
            message,
        }
    }

    fn to_json(&self) -> Value {
        json!({ "reason": self.reason, "message": self.message, "field": self.field })
    }
}

impl std::fmt::Display for Cause {
    /// `field: body`, one element of the aggregated message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            details: None,
            retry_after: None,
        }
    }

    /// The `Status` object for the response body or a watch `ERROR` event.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// 404 for a missing object: `services "x" not found`.
    pub fn not_found(res: Res<'_>, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        );
        e.details = Some(res.details(name));
        e
    }

    /// 404 for a path the server does not serve at all.
    pub fn no_route() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".to_string(),
        );
        e.details = Some(json!({ "causes": [
            { "reason": "UnexpectedServerResponse", "message": "404 page not found" }
        ]}));
        e
    }

    /// 409 when creating an object that exists.
    pub fn already_exists(res: Res<'_>, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        );
        e.details = Some(res.details(name));
        e
    }

    /// 409 optimistic-concurrency failure (stale `resourceVersion`).
    pub fn conflict(res: Res<'_>, name: &str) -> Self {
        Self::conflict_msg(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 with a custom reason text, e.g. a failed delete precondition.
    pub fn conflict_msg(res: Res<'_>, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                res.qualified()
            ),
        );
        e.details = Some(res.details(name));
        e
    }

    /// 409 server-side-apply field manager conflicts; `conflicts` is (manager, field path).
    pub fn apply_conflict(conflicts: &[(String, String)]) -> Self {
        let n = conflicts.len();
        let body = if n == 1 {
            format!("conflict with \"{}\": {}", conflicts[0].0, conflicts[0].1)
        } else {
            let mut managers: Vec<&str> = conflicts.iter().map(|(m, _)| m.as_str()).collect();
            managers.dedup();
            let mut out = String::new();
            for (i, m) in managers.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&format!("conflicts with \"{m}\":"));
                for (_, p) in conflicts.iter().filter(|(cm, _)| cm == m) {
                    out.push_str(&format!("\n- {p}"));
                }
            }
            out
        };
        let plural = if n == 1 { "" } else { "s" };
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Apply failed with {n} conflict{plural}: {body}"),
        );
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, p)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{m}\""),
                    "field": p,
                })
            })
            .collect();
        e.details = Some(json!({ "causes": causes }));
        e
    }

    /// 410 for a watch or continue token older than the retained history.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 400 for malformed requests (selectors, bodies, name mismatches).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    /// 422 for an object that fails validation with one cause; `kind` is the object's Kind.
    pub fn invalid(
        res: Res<'_>,
        kind: &str,
        name: &str,
        field: &str,
        cause_reason: &'static str,
        detail: &str,
    ) -> Self {
        Self::invalid_causes(
            res.group,
            kind,
            name,
            vec![Cause {
                field: field.to_string(),
                reason: cause_reason,
                message: detail.to_string(),
            }],
        )
    }

    /// 422 listing every validation failure, as `apierrors.NewInvalid` builds it: the
    /// message names the group-qualified Kind and aggregates the causes (`[a, b]` when
    /// there are several); `details` names the object.
    pub fn invalid_causes(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let rendered: Vec<String> = causes.iter().map(Cause::to_string).collect();
        let message = match rendered.as_slice() {
            [] => format!("{qualified} \"{name}\" is invalid"),
            [one] => format!("{qualified} \"{name}\" is invalid: {one}"),
            many => format!("{qualified} \"{name}\" is invalid: [{}]", many.join(", ")),
        };
        let mut e = Self::new(422, "Invalid", message);
        let mut d = json!({});
        if !kind.is_empty() {
            d["kind"] = json!(kind);
        }
        if !name.is_empty() {
            d["name"] = json!(name);
        }
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        d["causes"] = causes.iter().map(Cause::to_json).collect();
        e.details = Some(d);
        e
    }

    /// 422 for a server-side apply request without the `fieldManager` it requires.
    pub fn apply_needs_field_manager() -> Self {
        Self::invalid_causes(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![Cause::required(
                "fieldManager",
                "is required for apply patch",
            )],
        )
    }

    /// 504 for a get or list at a resourceVersion the server has not reached yet (the real
    /// server waits 3 s for its watch cache first; this one answers at once).
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        );
        e.retry_after = Some(1);
        e.details = Some(json!({
            "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
            "retryAfterSeconds": 1,
        }));
        e
    }

    /// 422 for a patch that parses but cannot be applied (failed JSON-patch `test`, missing path).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message.into())
    }

    /// 405 for a verb the path does not support.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_string(),
        )
    }

    /// 415 for a PATCH content type the server does not know.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({ct}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml, application/strategic-merge-patch+json"
            ),
        )
    }

    /// The error a test injected with `fail_next(n, code)`.
    pub fn injected(code: u16) -> Self {
        let (reason, message) = match code {
            400 => ("BadRequest", "injected failure"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden: injected failure"),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            409 => (
                "Conflict",
                "Operation cannot be fulfilled: injected failure",
            ),
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            500 => ("InternalError", "Internal error occurred: injected failure"),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            _ => ("Unknown", "injected failure"),
        };
        let mut e = Self::new(code, reason, message.to_string());
        if code == 429 {
            e.retry_after = Some(1);
            e.details = Some(json!({ "retryAfterSeconds": 1 }));
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: Res<'static> = Res {
        group: "",
        plural: "services",
    };

    #[test]
    fn not_found_matches_real_shape() {
        let s = ApiError::not_found(SVC, "x").to_status();
        assert_eq!(
            s,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"services \"x\" not found","reason":"NotFound",
                   "details":{"name":"x","kind":"services"},"code":404})
        );
    }

    #[test]
    fn group_resources_are_qualified() {
        let res = Res {
            group: "ferrolb.io",
            plural: "ipaddresspools",
        };
        let s = ApiError::already_exists(res, "p").to_status();
        assert_eq!(
            s["message"],
            "ipaddresspools.ferrolb.io \"p\" already exists"
        );
        assert_eq!(s["details"]["group"], "ferrolb.io");
    }

    #[test]
    fn apply_conflict_message() {
        let one = ApiError::apply_conflict(&[("other".into(), ".spec.foo".into())]);
        assert_eq!(
            one.message,
            "Apply failed with 1 conflict: conflict with \"other\": .spec.foo"
        );
        let cause = &one.to_status()["details"]["causes"][0];
        assert_eq!(cause["reason"], "FieldManagerConflict");
        assert_eq!(cause["field"], ".spec.foo");
        let two = ApiError::apply_conflict(&[
            ("a".into(), ".spec.x".into()),
            ("a".into(), ".spec.y".into()),
        ]);
        assert_eq!(
            two.message,
            "Apply failed with 2 conflicts: conflicts with \"a\":\n- .spec.x\n- .spec.y"
        );
    }

    #[test]
    fn too_many_requests_carries_retry_after() {
        let e = ApiError::injected(429);
        assert_eq!(e.retry_after, Some(1));
        assert_eq!(e.reason, "TooManyRequests");
    }
}
