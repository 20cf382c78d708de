//! Hand-written OpenAPI schemas for the fields whose admission checks need more than
//! schemars derives: the pool's address list and every label-selector list.
//!
//! ```text
//!   spec.addresses[i]          string ≤ 100 chars, two CEL rules on the item
//!   *Selectors[i]              bounded LabelSelector: operator enum, values per operator
//! ```
//!
//! A real kube-apiserver refuses a CRD whose CEL rules' *estimated* cost exceeds its
//! budget, and it estimates from the declared bounds: an unbounded list or string is
//! sized from the 3 MB request limit. So every list and string these rules touch is
//! bounded, and each rule runs on one item rather than on the whole list. The controller
//! re-validates everything anyway (`addresses`, `selector`); admission is the first line,
//! giving the user the error at `kubectl apply` time.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Most entries one pool's `spec.addresses` may hold.
pub const MAX_POOL_ADDRESSES: usize = 1024;
/// Longest address entry: an IPv6 range written in full with spaces is 81 characters.
pub const MAX_ADDRESS_LEN: usize = 100;
/// Most selectors in one selector list.
pub const MAX_SELECTORS: usize = 32;
/// Most requirements in one selector's `matchExpressions`, and labels in `matchLabels`.
pub const MAX_REQUIREMENTS: usize = 32;
/// Most values in one requirement.
pub const MAX_VALUES: usize = 64;

/// Admission message for an address entry that is neither a CIDR, an IP nor a range.
pub const BAD_ADDRESS_MESSAGE: &str =
    "is not a CIDR, a single IP, or a range FIRST-LAST of two IPs of one family";
/// Admission message for a CIDR with host bits set.
pub const HOST_BITS_MESSAGE: &str = "has host bits set: a CIDR must start at its network address";
/// Admission message for a requirement whose values do not fit its operator.
pub const VALUES_MESSAGE: &str =
    "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist";

/// `spec.addresses` of an IPAddressPool.
///
/// The range rule splits at the first `-` (IPs never contain one) and checks both halves
/// are IPs of one family; `start ≤ end` cannot be written in Kubernetes' CEL IP library, so
/// the controller reports a reversed range as `Invalid`.
pub fn pool_addresses(_: &mut SchemaGenerator) -> Schema {
    let first = "self.substring(0, self.indexOf('-')).trim()";
    let last = "self.substring(self.indexOf('-') + 1).trim()";
    let range = format!(
        "(self.indexOf('-') > 0 && isIP({first}) && isIP({last}) \
         && ip({first}).family() == ip({last}).family())"
    );
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_POOL_ADDRESSES,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ADDRESS_LEN,
            "x-kubernetes-validations": [
                {
                    "rule": format!("isCIDR(self) || isIP(self) || {range}"),
                    "messageExpression": format!("'\"' + self + '\" {BAD_ADDRESS_MESSAGE}'"),
                },
                {
                    "rule": "!isCIDR(self) || cidr(self) == cidr(self).masked()",
                    "messageExpression": format!("'\"' + self + '\" {HOST_BITS_MESSAGE}'"),
                },
            ],
        },
    })
}

/// A list of `metav1.LabelSelector`s, bounded, with the operator as an enum so a typo is
/// refused at admission (`Unsupported value: "in"`).
pub fn label_selectors(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": MAX_SELECTORS,
        "items": {
            "type": "object",
            "description": "A label selector: every matchLabels entry and every matchExpressions requirement must match.",
            "properties": {
                "matchLabels": {
                    "type": "object",
                    "maxProperties": MAX_REQUIREMENTS,
                    "additionalProperties": {"type": "string", "maxLength": 63},
                },
                "matchExpressions": {
                    "type": "array",
                    "maxItems": MAX_REQUIREMENTS,
                    "items": {
                        "type": "object",
                        "required": ["key", "operator"],
                        "properties": {
                            "key": {"type": "string", "minLength": 1, "maxLength": 317},
                            "operator": {
                                "type": "string",
                                "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                            },
                            "values": {
                                "type": "array",
                                "maxItems": MAX_VALUES,
                                "items": {"type": "string", "maxLength": 63},
                            },
                        },
                        "x-kubernetes-validations": [{
                            "rule": "self.operator in ['In', 'NotIn'] \
                                     ? has(self.values) && size(self.values) > 0 \
                                     : !has(self.values) || size(self.values) == 0",
                            "message": VALUES_MESSAGE,
                        }],
                    },
                },
            },
        },
    })
}
