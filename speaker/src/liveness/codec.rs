//! The heartbeat datagram: who is alive, whether it serves, on which interfaces, and whom
//! it hears — signed by its sender and authenticated by the cluster.
//!
//! ```text
//!  off  len  field
//!   0    4   magic "FLHB"
//!   4    1   version = 3 (2: the same without the signature, for previous-version peers)
//!   5    1   flags: bit 0 LEAVING (graceful shutdown), bit 1 SERVING (may announce: it is
//!            ready and connected), bit 2 SETTLED (serving for the hold-down, or since it
//!            joined no established peer), bit 3 ESTABLISHED (serving without a break for
//!            the hold-down); other bits sent as 0, ignored on receipt
//!   6    8   incarnation, big-endian (random per start, published in the sender's Lease)
//!  14    8   sequence, big-endian (strictly increasing within an incarnation)
//!  22    1   node name length n (1..=253)
//!  23    n   node name (UTF-8)
//!   .    1   interface count k (0..=64)
//!   .   k×   [ length m (1..=15) | name (m bytes, UTF-8) ], strictly ascending
//!   .    2   heard count h, big-endian (as many as fit the datagram)
//!   .   h×   [ node id u32 | age u16 ms | flags u8: bit 0 SERVING, bit 1 SETTLED ],
//!            ids strictly ascending: the peers the sender heard within its timeout, how
//!            long ago, and what they said of themselves
//!  end-96 64 (version 3 only) Ed25519 signature, by the sender's per-start key, of every
//!            byte before it; the public key is in the sender's Lease
//!  end-32 32 HMAC-SHA256(key, every byte before the tag, signature included) — the full
//!            tag, not truncated
//! ```
//!
//! 123 bytes at least (59 for version 2), 1452 at most: always one unfragmented UDP datagram
//! on a 1500-byte LAN, over IPv6 too. A node id is the first four bytes of SHA-256 of the node
//! name ([`node_id`]); receivers map ids back through the member list (from the Leases) and
//! ignore ids two members share.
//!
//! Two keys, two jobs. The HMAC, keyed by the secret every speaker shares, is the cheap outer
//! gate: a LAN host without the cluster key is turned away before any signature check. The
//! signature binds the heartbeat to its node: every speaker holds the cluster key, but only
//! node N holds N's private key, so a compromised node cannot speak for another one (not even
//! say LEAVING for it).
//!
//! [`decode`] checks length, magic and version, then the tag in constant time, and only then
//! parses the body: bytes without a valid tag never reach the field parser. What it returns
//! is [`Unverified`]: the caller must say which public key the claimed sender's Lease
//! publishes ([`Unverified::verify`]) to get the [`Heartbeat`]. A sender whose Lease
//! publishes a key must sign (version 3, valid signature); one whose Lease publishes none (a
//! previous-version speaker during a rolling upgrade) is accepted on the HMAC alone. The
//! encoding is canonical (and Ed25519 signatures deterministic) except for the reserved
//! header flag bits, which are ignored on receipt so that a later version can add a flag
//! this one skips: re-encoding an accepted datagram whose reserved bits are 0 with the same
//! keys gives the same bytes. (Reserved bits of a heard-list entry are refused: there is no
//! room to grow there without a new version.) Replay protection is not here but in the
//! detector, which remembers the highest (incarnation, sequence) per node.

use std::collections::BTreeSet;
use std::fmt;

use ed25519_dalek::Signature;
use ed25519_dalek::Signer as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

type HmacSha256 = Hmac<Sha256>;

/// First four bytes of every heartbeat, so stray traffic on the port is told apart at once.
pub const MAGIC: [u8; 4] = *b"FLHB";
/// The wire version this speaker sends to peers whose Lease publishes a public key
/// (3: version 2 plus the sender's Ed25519 signature).
pub const VERSION: u8 = 3;
/// The previous wire version (serving state and heard list, HMAC only): sent to, and accepted
/// from, peers whose Lease publishes no public key (previous-version speakers).
pub const VERSION_V2: u8 = 2;
/// Bytes of the HMAC-SHA256 tag at the end of each datagram (full length).
pub const TAG_LEN: usize = 32;
/// Bytes of the Ed25519 signature before the tag (version 3).
pub const SIG_LEN: usize = 64;
/// Shortest shared secret accepted: 128 bits, so the tag cannot be forged by guessing the key.
pub const MIN_KEY_LEN: usize = 16;
/// Longest node name (a Kubernetes Node name is a DNS subdomain, at most 253 characters).
pub const MAX_NODE_LEN: usize = 253;
/// Longest interface name (Linux IFNAMSIZ 16 minus the terminating NUL).
pub const MAX_INTERFACE_LEN: usize = 15;
/// Most interfaces one heartbeat can carry.
pub const MAX_INTERFACES: usize = 64;
/// Bytes before the node name: magic, version, flags, incarnation, sequence, name length.
const HEADER_LEN: usize = 23;
/// Bytes of one heard-list entry: id, age, flags.
pub const HEARD_ENTRY_LEN: usize = 7;
/// Shortest valid datagram of any version: one-byte node name, no interface, nobody heard,
/// no signature (version 2).
pub const MIN_LEN: usize = HEADER_LEN + 1 + 1 + 2 + TAG_LEN;
/// Shortest valid version-3 datagram (the same, signed).
pub const MIN_SIGNED_LEN: usize = MIN_LEN + SIG_LEN;
/// Longest valid datagram: one IPv6 UDP datagram on a 1500-byte MTU (1500 − 40 − 8).
pub const MAX_LEN: usize = 1452;

// The longest name with 64 of the longest interface names, signed, still leaves room for a
// few heard entries (a rotating window then lists every peer in turn); realistic names
// leave room for about 180.
const _: () = assert!(
    HEADER_LEN
        + MAX_NODE_LEN
        + 1
        + MAX_INTERFACES * (1 + MAX_INTERFACE_LEN)
        + 2
        + SIG_LEN
        + TAG_LEN
        + 7 * HEARD_ENTRY_LEN
        <= MAX_LEN
);

const FLAG_LEAVING: u8 = 0x01;
const FLAG_SERVING: u8 = 0x02;
const FLAG_SETTLED: u8 = 0x04;
const FLAG_ESTABLISHED: u8 = 0x08;
const HEARD_SERVING: u8 = 0x01;
const HEARD_SETTLED: u8 = 0x02;

/// A node's id in heard lists: the first four bytes of SHA-256 of its name.
pub fn node_id(node: &str) -> u32 {
    use sha2::Digest;
    let d = Sha256::digest(node.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// One peer a heartbeat's sender hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heard {
    /// [`node_id`] of the peer.
    pub id: u32,
    /// Milliseconds since the sender last heard it (saturating).
    pub age_ms: u16,
    /// What the peer's last heartbeat said: SERVING.
    pub serving: bool,
    /// What the peer's last heartbeat said: SETTLED.
    pub settled: bool,
}

/// The shared secret, ready to tag and verify; built once so a short key is refused early.
#[derive(Clone)]
pub struct Key(HmacSha256);

impl Key {
    /// Accepts a secret of at least [`MIN_KEY_LEN`] bytes (from the Kubernetes Secret).
    pub fn new(secret: &[u8]) -> Result<Key, KeyError> {
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: secret.len() });
        }
        // HMAC takes keys of any length; the error branch is unreachable but not unwrapped.
        HmacSha256::new_from_slice(secret)
            .map(Key)
            .map_err(|_| KeyError::TooShort { len: secret.len() })
    }

    fn mac(&self) -> HmacSha256 {
        self.0.clone()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Why a shared secret was refused (configuration error: not retryable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_LEN`] bytes: too weak to authenticate heartbeats.
    #[error("heartbeat key is {len} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort {
        /// Length of the refused secret.
        len: usize,
    },
}

/// One heartbeat: "node N, incarnation I, message S, usable on these interfaces, serving
/// or not, hearing these peers".
///
/// Fields are private and checked by [`Heartbeat::new`] and [`Heartbeat::with_heard`], so
/// every value encodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    node: String,
    incarnation: u64,
    seq: u64,
    leaving: bool,
    serving: bool,
    settled: bool,
    established: bool,
    interfaces: BTreeSet<String>,
    /// Strictly ascending by id.
    heard: Vec<Heard>,
}

impl Heartbeat {
    /// Builds a heartbeat after checking every limit of the wire format.
    pub fn new(
        node: impl Into<String>,
        incarnation: u64,
        seq: u64,
        interfaces: BTreeSet<String>,
    ) -> Result<Heartbeat, Malformed> {
        let node = node.into();
        check_node(&node)?;
        if interfaces.len() > MAX_INTERFACES {
            return Err(Malformed::TooManyInterfaces {
                count: interfaces.len(),
            });
        }
        for name in &interfaces {
            check_interface(name)?;
        }
        Ok(Heartbeat {
            node,
            incarnation,
            seq,
            leaving: false,
            serving: false,
            settled: false,
            established: false,
            interfaces,
            heard: Vec::new(),
        })
    }

    /// Marks (or unmarks) the heartbeat as a graceful-shutdown notice.
    pub fn with_leaving(mut self, leaving: bool) -> Heartbeat {
        self.leaving = leaving;
        self
    }

    /// Sets the sender's own state: SERVING and SETTLED.
    pub fn with_state(mut self, serving: bool, settled: bool) -> Heartbeat {
        self.serving = serving;
        self.settled = settled;
        self
    }

    /// Sets ESTABLISHED: the sender has served without a break for its hold-down.
    pub fn with_established(mut self, established: bool) -> Heartbeat {
        self.established = established;
        self
    }

    /// How many heard entries fit beside this heartbeat's name, interfaces and signature
    /// (so that it encodes in either version).
    pub fn heard_capacity(&self) -> usize {
        (MAX_LEN - self.len_without_heard() - SIG_LEN) / HEARD_ENTRY_LEN
    }

    /// Attaches the heard list: ids strictly ascending, at most [`Self::heard_capacity`].
    pub fn with_heard(mut self, heard: Vec<Heard>) -> Result<Heartbeat, Malformed> {
        if heard.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(Malformed::UnsortedHeard);
        }
        if heard.len() > self.heard_capacity() {
            return Err(Malformed::TooManyHeard { count: heard.len() });
        }
        self.heard = heard;
        Ok(self)
    }

    /// Unsigned (version 2) length without the heard list.
    fn len_without_heard(&self) -> usize {
        HEADER_LEN
            + self.node.len()
            + 1
            + self.interfaces.iter().map(|i| 1 + i.len()).sum::<usize>()
            + 2
            + TAG_LEN
    }

    /// The sender's Kubernetes Node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The sender's incarnation: random per start, published in its Lease.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Position within the incarnation; lets receivers refuse replays and reordering.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// True when the sender is shutting down gracefully and must be taken over at once.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// The sender's usable interfaces, which every speaker needs to rank nodes the same way.
    pub fn interfaces(&self) -> &BTreeSet<String> {
        &self.interfaces
    }

    /// The sender may announce: ready, and connected to its peers.
    pub fn is_serving(&self) -> bool {
        self.serving
    }

    /// The sender has been serving for its hold-down (or joined when no peer was settled).
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// The sender has served without a break for its hold-down: a node that comes back
    /// while such a peer exists settles before it takes IPs back.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// The peers the sender hears, ascending by id.
    pub fn heard(&self) -> &[Heard] {
        &self.heard
    }
}

/// Checks a node name: non-empty, at most [`MAX_NODE_LEN`] bytes, no control characters.
pub fn check_node(node: &str) -> Result<(), Malformed> {
    if node.is_empty() {
        return Err(Malformed::EmptyNodeName);
    }
    if node.len() > MAX_NODE_LEN {
        return Err(Malformed::NodeNameTooLong { len: node.len() });
    }
    if node.chars().any(char::is_control) {
        return Err(Malformed::BadNodeName);
    }
    Ok(())
}

/// Checks an interface name by the kernel's rules (`dev_valid_name`): 1–15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace.
pub fn check_interface(name: &str) -> Result<(), Malformed> {
    if name.is_empty() {
        return Err(Malformed::EmptyInterfaceName);
    }
    if name.len() > MAX_INTERFACE_LEN {
        return Err(Malformed::InterfaceNameTooLong { len: name.len() });
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(Malformed::BadInterfaceName);
    }
    Ok(())
}

/// Why a datagram is not an acceptable heartbeat; each is one drop-reason counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than [`MIN_LEN`]: truncated or not ours.
    #[error("datagram of {len} bytes is shorter than the smallest heartbeat ({MIN_LEN})")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Longer than [`MAX_LEN`]: refused before spending a hash on it.
    #[error("datagram of {len} bytes is longer than the largest heartbeat ({MAX_LEN})")]
    TooLong {
        /// Datagram length.
        len: usize,
    },
    /// Does not start with [`MAGIC`]: some other protocol on our port.
    #[error("bad magic")]
    BadMagic,
    /// A wire version this speaker does not speak (mixed versions during an upgrade).
    #[error("unsupported heartbeat version {version}")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// The HMAC does not match: forged, corrupted, or sent with another key.
    #[error("bad authentication tag")]
    BadTag,
    /// A version-3 heartbeat whose signature does not verify under the public key its
    /// claimed sender's Lease publishes: forged by another holder of the cluster key,
    /// corrupted, or signed by a newer start of that node whose Lease we have not seen yet.
    #[error("bad signature: not signed by the key the sender's Lease publishes")]
    BadSignature,
    /// A version-2 (HMAC-only) heartbeat claiming a node whose Lease publishes a public
    /// key: such a node signs everything it sends, so this is a forgery (or a message from
    /// a previous-version start whose Lease we have not seen replaced yet).
    #[error("unsigned heartbeat from a node whose Lease publishes a key")]
    Unsigned,
    /// Authentic but not well formed: a bug in the sender.
    #[error("malformed heartbeat: {reason}")]
    Malformed {
        /// What was wrong.
        reason: Malformed,
    },
}

/// What is wrong with a heartbeat's fields (from [`Heartbeat::new`] or [`decode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The node name is empty.
    #[error("empty node name")]
    EmptyNodeName,
    /// The node name is longer than [`MAX_NODE_LEN`] bytes.
    #[error("node name of {len} bytes exceeds {MAX_NODE_LEN}")]
    NodeNameTooLong {
        /// Name length in bytes.
        len: usize,
    },
    /// The node name is not UTF-8 or contains control characters.
    #[error("node name is not printable UTF-8")]
    BadNodeName,
    /// More than [`MAX_INTERFACES`] interfaces.
    #[error("{count} interfaces exceed {MAX_INTERFACES}")]
    TooManyInterfaces {
        /// Number of interfaces.
        count: usize,
    },
    /// An interface name is empty.
    #[error("empty interface name")]
    EmptyInterfaceName,
    /// An interface name is longer than [`MAX_INTERFACE_LEN`] bytes.
    #[error("interface name of {len} bytes exceeds {MAX_INTERFACE_LEN}")]
    InterfaceNameTooLong {
        /// Name length in bytes.
        len: usize,
    },
    /// An interface name is not UTF-8 or breaks the kernel's naming rules.
    #[error("invalid interface name")]
    BadInterfaceName,
    /// Interfaces are not in strictly ascending order (duplicates or non-canonical encoding).
    #[error("interfaces not in strictly ascending order")]
    UnsortedInterfaces,
    /// The body ends inside a field.
    #[error("body truncated")]
    Truncated,
    /// Heard entries not in strictly ascending id order.
    #[error("heard entries not in strictly ascending id order")]
    UnsortedHeard,
    /// More heard entries than fit one datagram.
    #[error("{count} heard entries do not fit one datagram")]
    TooManyHeard {
        /// Number of entries.
        count: usize,
    },
    /// A heard entry has flag bits this version does not define.
    #[error("unknown flag bits in a heard entry")]
    BadHeardFlags,
    /// Bytes left between the heard list and the signature (or the tag).
    #[error("{count} trailing bytes before the signature or the tag")]
    TrailingBytes {
        /// Number of unexpected bytes.
        count: usize,
    },
}

impl From<Malformed> for DecodeError {
    fn from(reason: Malformed) -> Self {
        DecodeError::Malformed { reason }
    }
}

/// Serializes a heartbeat as wire version 3: signed with the sender's per-start key, then
/// tagged with the shared key. Infallible because [`Heartbeat`] is valid by construction.
pub fn encode(hb: &Heartbeat, key: &Key, signer: &SigningKey) -> Vec<u8> {
    let mut out = body(hb, VERSION);
    let signature = signer.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    push_tag(&mut out, key);
    out
}

/// Serializes a heartbeat as wire version 2 (HMAC only): what a previous-version speaker
/// understands, sent only to peers whose Lease publishes no public key.
pub fn encode_v2(hb: &Heartbeat, key: &Key) -> Vec<u8> {
    let mut out = body(hb, VERSION_V2);
    push_tag(&mut out, key);
    out
}

fn push_tag(out: &mut Vec<u8>, key: &Key) {
    let tag = key.mac().chain_update(&*out).finalize().into_bytes();
    out.extend_from_slice(&tag);
}

/// Every byte before the signature (version 3) or the tag (version 2).
fn body(hb: &Heartbeat, version: u8) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(hb.len_without_heard() + SIG_LEN + hb.heard.len() * HEARD_ENTRY_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    out.push(
        flag(hb.leaving, FLAG_LEAVING)
            | flag(hb.serving, FLAG_SERVING)
            | flag(hb.settled, FLAG_SETTLED)
            | flag(hb.established, FLAG_ESTABLISHED),
    );
    out.extend_from_slice(&hb.incarnation.to_be_bytes());
    out.extend_from_slice(&hb.seq.to_be_bytes());
    push_short_str(&mut out, &hb.node);
    // At most MAX_INTERFACES (64), checked by Heartbeat::new.
    out.push(u8::try_from(hb.interfaces.len()).unwrap_or(u8::MAX));
    for name in &hb.interfaces {
        push_short_str(&mut out, name);
    }
    // At most heard_capacity() (< 208), checked by with_heard.
    out.extend_from_slice(
        &u16::try_from(hb.heard.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for h in &hb.heard {
        out.extend_from_slice(&h.id.to_be_bytes());
        out.extend_from_slice(&h.age_ms.to_be_bytes());
        out.push(flag(h.serving, HEARD_SERVING) | flag(h.settled, HEARD_SETTLED));
    }
    out
}

fn push_short_str(out: &mut Vec<u8>, s: &str) {
    // Lengths are ≤ 253 by construction (checked in Heartbeat::new).
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

/// A datagram whose HMAC checked out (it comes from a holder of the cluster key), parsed,
/// but not yet bound to its claimed sender: [`Unverified::verify`] does that with the public
/// key the sender's Lease publishes.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    hb: Heartbeat,
    /// Version 3: the signed bytes and their signature; `None` for version 2.
    signed: Option<(&'a [u8], Signature)>,
}

impl Unverified<'_> {
    /// The node the datagram claims to come from: whose Lease to look the key up in.
    pub fn node(&self) -> &str {
        self.hb.node()
    }

    /// True for version 3 (carries a signature).
    pub fn is_signed(&self) -> bool {
        self.signed.is_some()
    }

    /// The heartbeat, if its claimed sender's Lease allows it: with a published key, only a
    /// version-3 datagram whose signature verifies under that key (strict Ed25519: no
    /// malleable or small-order signatures); without one (a previous-version speaker, or a
    /// node we know no Lease of), the HMAC alone, as in version 2. One signature check at
    /// most.
    pub fn verify(self, published: Option<&VerifyingKey>) -> Result<Heartbeat, DecodeError> {
        match (published, self.signed) {
            (None, _) => Ok(self.hb),
            (Some(_), None) => Err(DecodeError::Unsigned),
            (Some(key), Some((signed, signature))) => key
                .verify_strict(signed, &signature)
                .map(|()| self.hb)
                .map_err(|_| DecodeError::BadSignature),
        }
    }
}

/// [`decode_any`], then [`Unverified::verify`] with the key `published` returns for the
/// claimed sender (its Lease's public key, `None` when it publishes none).
pub fn decode_verified(
    bytes: &[u8],
    keys: &[Key],
    published: impl FnOnce(&str) -> Option<VerifyingKey>,
) -> Result<Heartbeat, DecodeError> {
    let unverified = decode_any(bytes, keys)?;
    let key = published(unverified.node());
    unverified.verify(key.as_ref())
}

/// [`decode`] trying each accepted key in turn (the current one first): during a key
/// rotation speakers sign with one key and accept two, so no view splits.
pub fn decode_any<'a>(bytes: &'a [u8], keys: &[Key]) -> Result<Unverified<'a>, DecodeError> {
    let mut last = DecodeError::BadTag;
    for key in keys {
        match decode(bytes, key) {
            Err(DecodeError::BadTag) => last = DecodeError::BadTag,
            other => return other,
        }
    }
    Err(last)
}

/// Checks a datagram's length, magic, version and HMAC, then parses it; never panics,
/// whatever the bytes. The signature (version 3) is checked by [`Unverified::verify`].
pub fn decode<'a>(bytes: &'a [u8], key: &Key) -> Result<Unverified<'a>, DecodeError> {
    let len = bytes.len();
    if len < MIN_LEN {
        return Err(DecodeError::TooShort { len });
    }
    if len > MAX_LEN {
        return Err(DecodeError::TooLong { len });
    }
    if bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = bytes[4];
    if version != VERSION && version != VERSION_V2 {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    if version == VERSION && len < MIN_SIGNED_LEN {
        return Err(DecodeError::TooShort { len });
    }
    let (authenticated, tag) = bytes.split_at(len - TAG_LEN);
    key.mac()
        .chain_update(authenticated)
        .verify_slice(tag)
        .map_err(|_| DecodeError::BadTag)?;
    if version == VERSION_V2 {
        let hb = parse_body(authenticated)?;
        return Ok(Unverified { hb, signed: None });
    }
    let (body, signature) = authenticated.split_at(authenticated.len() - SIG_LEN);
    let signature: [u8; SIG_LEN] = signature
        .try_into()
        .map_err(|_| DecodeError::TooShort { len })?;
    let hb = parse_body(body)?;
    Ok(Unverified {
        hb,
        signed: Some((body, Signature::from_bytes(&signature))),
    })
}

/// Parses an authenticated body (everything before the signature or the tag).
fn parse_body(body: &[u8]) -> Result<Heartbeat, Malformed> {
    let mut r = Reader { rest: body };
    r.take(4)?; // magic, checked by decode
    r.take(1)?; // version, checked by decode
    let flags = r.u8()?;
    let incarnation = r.u64()?;
    let seq = r.u64()?;
    let node = r.short_str()?.ok_or(Malformed::BadNodeName)?;
    check_node(&node)?;
    let count = usize::from(r.u8()?);
    if count > MAX_INTERFACES {
        return Err(Malformed::TooManyInterfaces { count });
    }
    let mut interfaces = BTreeSet::new();
    for _ in 0..count {
        let name = r.short_str()?.ok_or(Malformed::BadInterfaceName)?;
        check_interface(&name)?;
        if interfaces.last().is_some_and(|last: &String| *last >= name) {
            return Err(Malformed::UnsortedInterfaces);
        }
        interfaces.insert(name);
    }
    let count = usize::from(r.u16()?);
    let mut heard: Vec<Heard> = Vec::with_capacity(count.min(MAX_LEN / HEARD_ENTRY_LEN));
    for _ in 0..count {
        let id = r.u32()?;
        let age_ms = r.u16()?;
        let f = r.u8()?;
        if f & !(HEARD_SERVING | HEARD_SETTLED) != 0 {
            return Err(Malformed::BadHeardFlags);
        }
        if heard.last().is_some_and(|last| last.id >= id) {
            return Err(Malformed::UnsortedHeard);
        }
        heard.push(Heard {
            id,
            age_ms,
            serving: f & HEARD_SERVING != 0,
            settled: f & HEARD_SETTLED != 0,
        });
    }
    if !r.rest.is_empty() {
        return Err(Malformed::TrailingBytes {
            count: r.rest.len(),
        });
    }
    Ok(Heartbeat {
        node,
        incarnation,
        seq,
        leaving: flags & FLAG_LEAVING != 0,
        serving: flags & FLAG_SERVING != 0,
        settled: flags & FLAG_SETTLED != 0,
        established: flags & FLAG_ESTABLISHED != 0,
        interfaces,
        heard,
    })
}

/// A cursor over the body that reports [`Malformed::Truncated`] instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(Malformed::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let mut buf = [0u8; 2];
        buf.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(buf))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let mut buf = [0u8; 4];
        buf.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(buf))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(buf))
    }

    /// A length-prefixed string; `Ok(None)` when it is not UTF-8.
    fn short_str(&mut self) -> Result<Option<String>, Malformed> {
        let len = usize::from(self.u8()?);
        let raw = self.take(len)?;
        Ok(std::str::from_utf8(raw).ok().map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef-ferrolb-test";

    fn key() -> Key {
        Key::new(SECRET).unwrap()
    }

    /// Node A's per-start key (fixed here, random in the speaker).
    fn signer() -> SigningKey {
        SigningKey::from_bytes(&[0xa1; 32])
    }

    /// Another node's key.
    fn other_signer() -> SigningKey {
        SigningKey::from_bytes(&[0xb2; 32])
    }

    /// What a receiver does: HMAC, then the signature with the claimed sender's Lease key.
    fn open(bytes: &[u8], published: Option<&VerifyingKey>) -> Result<Heartbeat, DecodeError> {
        decode(bytes, &key())?.verify(published)
    }

    /// Opens a datagram signed by [`signer`], checking its signature.
    fn open_a(bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
        open(bytes, Some(&signer().verifying_key()))
    }

    fn enc(hb: &Heartbeat) -> Vec<u8> {
        encode(hb, &key(), &signer())
    }

    fn ifaces(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn mk_hb() -> Heartbeat {
        Heartbeat::new(
            "node-a",
            1_700_000_000_000_000_000,
            42,
            ifaces(&["eth0", "bond0"]),
        )
        .unwrap()
    }

    /// Builds a datagram from a raw body with a valid tag, to reach the body parser.
    fn sign(body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        out.extend_from_slice(&key().mac().chain_update(body).finalize().into_bytes());
        out
    }

    /// Builds a version-3 datagram from a raw body: A's signature, then a valid tag.
    fn sign_v3(body: &[u8]) -> Vec<u8> {
        let mut out = body.to_vec();
        out.extend_from_slice(&signer().sign(body).to_bytes());
        sign(&out)
    }

    /// A version-2 header (magic, version, flags, incarnation, seq) followed by `rest`.
    fn raw_body(rest: &[u8]) -> Vec<u8> {
        raw_body_v(VERSION_V2, rest)
    }

    fn raw_body_v(version: u8, rest: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(version);
        b.push(0);
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    fn heard(id: u32, age_ms: u16, serving: bool, settled: bool) -> Heard {
        Heard {
            id,
            age_ms,
            serving,
            settled,
        }
    }

    #[test]
    fn layout_matches_the_diagram() {
        let hb = mk_hb()
            .with_leaving(true)
            .with_state(true, false)
            .with_heard(vec![
                heard(7, 120, true, true),
                heard(0x0102_0304, 0, false, false),
            ])
            .unwrap();
        let bytes = enc(&hb);
        assert_eq!(&bytes[..4], b"FLHB");
        assert_eq!(bytes[4], 3);
        assert_eq!(bytes[5], FLAG_LEAVING | FLAG_SERVING);
        assert_eq!(bytes[6..14], 1_700_000_000_000_000_000u64.to_be_bytes());
        assert_eq!(bytes[14..22], 42u64.to_be_bytes());
        assert_eq!(bytes[22], 6);
        assert_eq!(&bytes[23..29], b"node-a");
        assert_eq!(bytes[29], 2);
        assert_eq!(&bytes[30..36], b"\x05bond0");
        assert_eq!(&bytes[36..41], b"\x04eth0");
        assert_eq!(bytes[41..43], [0, 2]);
        assert_eq!(bytes[43..50], [0, 0, 0, 7, 0, 120, 0b11]);
        assert_eq!(bytes[50..57], [1, 2, 3, 4, 0, 0, 0]);
        assert_eq!(bytes.len(), 57 + SIG_LEN + TAG_LEN);
        let signature = Signature::from_bytes(bytes[57..57 + SIG_LEN].try_into().unwrap());
        signer()
            .verifying_key()
            .verify_strict(&bytes[..57], &signature)
            .unwrap();
        let tag = key().mac().chain_update(&bytes[..57 + SIG_LEN]).finalize();
        assert_eq!(bytes[57 + SIG_LEN..], tag.into_bytes()[..]);
        // Version 2: the same bytes but the version, no signature.
        let v2 = encode_v2(&hb, &key());
        assert_eq!(v2[4], 2);
        assert_eq!(v2[5..57], bytes[5..57]);
        assert_eq!(v2.len(), 57 + TAG_LEN);
    }

    #[test]
    fn node_ids_are_stable() {
        // Every speaker version must map a name to the same id: pinned values.
        assert_eq!(node_id("node-a"), node_id("node-a"));
        assert_ne!(node_id("node-a"), node_id("node-b"));
        assert_eq!(
            node_id(""),
            0xe3b0_c442,
            "SHA-256 of the empty string starts e3b0c442"
        );
    }

    #[test]
    fn heard_lists_are_checked() {
        let hb = mk_hb();
        let cap = hb.heard_capacity();
        let full: Vec<Heard> = (0..cap as u32).map(|i| heard(i, 0, true, true)).collect();
        let max = hb.clone().with_heard(full.clone()).unwrap();
        let len = enc(&max).len();
        assert!(
            len <= MAX_LEN && MAX_LEN - len < HEARD_ENTRY_LEN,
            "{len} bytes"
        );
        let mut over = full;
        over.push(heard(u32::MAX, 0, true, true));
        assert_eq!(
            hb.clone().with_heard(over).unwrap_err(),
            Malformed::TooManyHeard { count: cap + 1 }
        );
        assert_eq!(
            hb.with_heard(vec![heard(2, 0, true, true), heard(2, 0, true, true)])
                .unwrap_err(),
            Malformed::UnsortedHeard
        );
    }

    #[test]
    fn round_trip() {
        for hb in [
            mk_hb(),
            mk_hb().with_leaving(true),
            Heartbeat::new("n", 0, 0, BTreeSet::new()).unwrap(),
            Heartbeat::new("x".repeat(MAX_NODE_LEN), u64::MAX, u64::MAX, max_ifaces()).unwrap(),
            mk_hb()
                .with_state(true, true)
                .with_heard(vec![
                    heard(1, 65_535, true, false),
                    heard(9, 3, false, false),
                ])
                .unwrap(),
        ] {
            let bytes = enc(&hb);
            assert!((MIN_SIGNED_LEN..=MAX_LEN).contains(&bytes.len()));
            assert_eq!(open_a(&bytes), Ok(hb.clone()));
            let v2 = encode_v2(&hb, &key());
            assert!((MIN_LEN..=MAX_LEN).contains(&v2.len()));
            assert_eq!(open(&v2, None), Ok(hb));
        }
    }

    fn max_ifaces() -> BTreeSet<String> {
        (0..MAX_INTERFACES).map(|i| format!("{i:0>15}")).collect()
    }

    #[test]
    fn extreme_sizes_are_min_and_at_most_max_len() {
        let small = Heartbeat::new("n", 0, 0, BTreeSet::new()).unwrap();
        assert_eq!(enc(&small).len(), MIN_SIGNED_LEN);
        assert_eq!(encode_v2(&small, &key()).len(), MIN_LEN);
        let big = Heartbeat::new("x".repeat(MAX_NODE_LEN), 0, 0, max_ifaces()).unwrap();
        let cap = big.heard_capacity();
        assert!(
            cap >= 7,
            "the largest heartbeat still carries {cap} heard entries"
        );
        let full = (0..cap as u32).map(|i| heard(i, 0, true, true)).collect();
        let big = big.with_heard(full).unwrap();
        assert!(MAX_LEN - enc(&big).len() < HEARD_ENTRY_LEN);
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            Key::new(b"short").unwrap_err(),
            KeyError::TooShort { len: 5 }
        );
        assert!(Key::new(&[0u8; MIN_KEY_LEN]).is_ok());
        assert_eq!(format!("{:?}", key()), "Key(<redacted>)");
    }

    #[test]
    fn heartbeat_new_checks_limits() {
        let cases: Vec<(&str, String, BTreeSet<String>, Malformed)> = vec![
            (
                "empty node",
                String::new(),
                ifaces(&[]),
                Malformed::EmptyNodeName,
            ),
            (
                "long node",
                "a".repeat(254),
                ifaces(&[]),
                Malformed::NodeNameTooLong { len: 254 },
            ),
            (
                "control char",
                "a\nb".into(),
                ifaces(&[]),
                Malformed::BadNodeName,
            ),
            (
                "empty iface",
                "n".into(),
                ifaces(&[""]),
                Malformed::EmptyInterfaceName,
            ),
            (
                "long iface",
                "n".into(),
                ifaces(&["0123456789abcdef"]),
                Malformed::InterfaceNameTooLong { len: 16 },
            ),
            (
                "slash",
                "n".into(),
                ifaces(&["a/b"]),
                Malformed::BadInterfaceName,
            ),
            (
                "colon",
                "n".into(),
                ifaces(&["eth0:1"]),
                Malformed::BadInterfaceName,
            ),
            (
                "space",
                "n".into(),
                ifaces(&["a b"]),
                Malformed::BadInterfaceName,
            ),
            (
                "dot",
                "n".into(),
                ifaces(&["."]),
                Malformed::BadInterfaceName,
            ),
            (
                "dotdot",
                "n".into(),
                ifaces(&[".."]),
                Malformed::BadInterfaceName,
            ),
            (
                "too many",
                "n".into(),
                (0..=MAX_INTERFACES).map(|i| format!("e{i}")).collect(),
                Malformed::TooManyInterfaces { count: 65 },
            ),
        ];
        for (name, node, ifs, want) in cases {
            assert_eq!(Heartbeat::new(node, 0, 0, ifs), Err(want), "{name}");
        }
    }

    #[test]
    fn every_decode_error() {
        let good = encode_v2(&mk_hb(), &key());
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };
        let long = Heartbeat::new("n", 0, 0, BTreeSet::new()).unwrap();
        let mut too_long = enc(&long);
        too_long.resize(MAX_LEN + 1, 0);

        let node_then_count = |node: &[u8], rest: &[u8]| {
            let mut b = vec![u8::try_from(node.len()).unwrap()];
            b.extend_from_slice(node);
            b.extend_from_slice(rest);
            sign(&raw_body(&b))
        };
        let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
            ("empty", vec![], DecodeError::TooShort { len: 0 }),
            (
                "one short",
                good[..MIN_LEN - 1].to_vec(),
                DecodeError::TooShort { len: MIN_LEN - 1 },
            ),
            (
                "too long",
                too_long,
                DecodeError::TooLong { len: MAX_LEN + 1 },
            ),
            ("magic", with(0, b'X'), DecodeError::BadMagic),
            (
                "version 0",
                with(4, 0),
                DecodeError::UnsupportedVersion { version: 0 },
            ),
            (
                "version 1 (before the heard list)",
                with(4, 1),
                DecodeError::UnsupportedVersion { version: 1 },
            ),
            (
                "version 4",
                with(4, 4),
                DecodeError::UnsupportedVersion { version: 4 },
            ),
            (
                "version 3 without room for a signature",
                with(4, 3),
                DecodeError::TooShort { len: good.len() },
            ),
            ("flipped flag", with(5, 0x01), DecodeError::BadTag),
            (
                "flipped tag",
                with(good.len() - 1, !good[good.len() - 1]),
                DecodeError::BadTag,
            ),
            (
                "node not utf8",
                node_then_count(&[0xff, 0xfe], &[0, 0, 0]),
                Malformed::BadNodeName.into(),
            ),
            (
                "empty node",
                node_then_count(b"", &[0, 0, 0, 0]),
                Malformed::EmptyNodeName.into(),
            ),
            (
                "too many ifaces",
                node_then_count(b"n", &[65, 0, 0]),
                Malformed::TooManyInterfaces { count: 65 }.into(),
            ),
            (
                "iface not utf8",
                node_then_count(b"n", &[1, 1, 0xff, 0, 0]),
                Malformed::BadInterfaceName.into(),
            ),
            (
                "iface too long",
                node_then_count(
                    b"n",
                    &[
                        1, 16, b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a',
                        b'a', b'a', b'a', b'a', b'a',
                    ],
                ),
                Malformed::InterfaceNameTooLong { len: 16 }.into(),
            ),
            (
                "iface empty",
                node_then_count(b"n", &[1, 0, 0, 0]),
                Malformed::EmptyInterfaceName.into(),
            ),
            (
                "unsorted",
                node_then_count(b"n", &[2, 1, b'b', 1, b'a']),
                Malformed::UnsortedInterfaces.into(),
            ),
            (
                "duplicate",
                node_then_count(b"n", &[2, 1, b'a', 1, b'a']),
                Malformed::UnsortedInterfaces.into(),
            ),
            (
                "truncated iface",
                node_then_count(b"n", &[1, 9, b'a']),
                Malformed::Truncated.into(),
            ),
            (
                "trailing",
                node_then_count(b"n", &[0, 0, 0, 0xaa, 0xbb]),
                Malformed::TrailingBytes { count: 2 }.into(),
            ),
            (
                "no heard count",
                node_then_count(b"nn", &[0, 0]),
                Malformed::Truncated.into(),
            ),
            (
                "truncated heard entry",
                node_then_count(b"n", &[0, 0, 1, 0, 0, 0, 1, 0]),
                Malformed::Truncated.into(),
            ),
            (
                "heard unsorted",
                node_then_count(b"n", &[0, 0, 2, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1]),
                Malformed::UnsortedHeard.into(),
            ),
            (
                "heard flag bits",
                node_then_count(b"n", &[0, 0, 1, 0, 0, 0, 2, 0, 0, 0x04]),
                Malformed::BadHeardFlags.into(),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(open(&bytes, None), Err(want), "{name}");
        }
    }

    #[test]
    fn unknown_flag_bits_are_ignored() {
        let mut body = enc(&mk_hb());
        body.truncate(body.len() - TAG_LEN - SIG_LEN);
        body[5] = 0xf0;
        let hb = open_a(&sign_v3(&body)).unwrap();
        assert!(!hb.is_leaving() && !hb.is_serving() && !hb.is_settled());
    }

    #[test]
    fn any_accepted_key_verifies_and_the_others_say_bad_tag() {
        let old = Key::new(b"the-previous-heartbeat-key").unwrap();
        let bytes = encode(&mk_hb(), &old, &signer());
        let any = |keys: &[Key]| decode_any(&bytes, keys).map(|u| u.verify(None));
        assert_eq!(any(&[key(), old.clone()]), Ok(Ok(mk_hb())));
        assert_eq!(any(&[key()]), Err(DecodeError::BadTag));
        assert_eq!(any(&[]), Err(DecodeError::BadTag));
        let short = &bytes[..10];
        assert!(matches!(
            decode_any(short, &[key(), old]),
            Err(DecodeError::TooShort { .. })
        ));
    }

    #[test]
    fn wrong_key_is_bad_tag() {
        let other = Key::new(b"another-secret-of-16+").unwrap();
        for bytes in [enc(&mk_hb()), encode_v2(&mk_hb(), &key())] {
            assert!(matches!(decode(&bytes, &other), Err(DecodeError::BadTag)));
        }
    }

    fn arb_iface() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,15}".prop_filter("kernel rules", |s| s != "." && s != "..")
    }

    fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
        (
            "[a-z0-9.-]{1,253}",
            any::<u64>(),
            any::<u64>(),
            any::<(bool, bool, bool, bool)>(),
            proptest::collection::btree_set(arb_iface(), 0..=MAX_INTERFACES),
            proptest::collection::btree_map(any::<u32>(), any::<(u16, bool, bool)>(), 0..300),
        )
            .prop_map(
                |(node, inc, seq, (leaving, serving, settled, established), ifs, heard_map)| {
                    let hb = Heartbeat::new(node, inc, seq, ifs)
                        .unwrap()
                        .with_leaving(leaving)
                        .with_state(serving, settled)
                        .with_established(established);
                    let cap = hb.heard_capacity();
                    let list = heard_map
                        .into_iter()
                        .take(cap)
                        .map(|(id, (age_ms, serving, settled))| heard(id, age_ms, serving, settled))
                        .collect();
                    hb.with_heard(list).unwrap()
                },
            )
    }

    /// What a holder of the cluster key can do to any datagram: change it, then re-tag it.
    fn retag(bytes: &[u8]) -> Vec<u8> {
        sign(&bytes[..bytes.len() - TAG_LEN])
    }

    fn mk_hb_for(node: &str) -> Heartbeat {
        Heartbeat::new(node, 77, 1_000, ifaces(&["eth0"]))
            .unwrap()
            .with_state(true, true)
    }

    #[test]
    fn a_heartbeat_for_b_signed_with_a_key_is_rejected() {
        // A holds the cluster key and its own private key, and claims to be B.
        let (a, b) = (signer(), other_signer());
        let forged = encode(&mk_hb_for("node-b"), &key(), &a);
        let unverified = decode(&forged, &key()).unwrap();
        assert_eq!(unverified.node(), "node-b");
        assert!(unverified.is_signed());
        assert_eq!(
            open(&forged, Some(&b.verifying_key())),
            Err(DecodeError::BadSignature)
        );
        // B's own heartbeat passes, and would not under A's key.
        let genuine = encode(&mk_hb_for("node-b"), &key(), &b);
        assert_eq!(
            open(&genuine, Some(&b.verifying_key())),
            Ok(mk_hb_for("node-b"))
        );
        assert_eq!(
            open(&genuine, Some(&a.verifying_key())),
            Err(DecodeError::BadSignature)
        );
    }

    #[test]
    fn a_forged_leaving_for_b_is_rejected_whether_signed_by_a_or_unsigned() {
        let b = other_signer().verifying_key();
        let leaving = mk_hb_for("node-b").with_leaving(true);
        let by_a = encode(&leaving, &key(), &signer());
        let unsigned = encode_v2(&leaving, &key());
        // Both carry a valid HMAC: the cluster key alone no longer speaks for B.
        assert!(decode(&by_a, &key()).is_ok() && decode(&unsigned, &key()).is_ok());
        assert_eq!(open(&by_a, Some(&b)), Err(DecodeError::BadSignature));
        assert_eq!(open(&unsigned, Some(&b)), Err(DecodeError::Unsigned));
        // A signature made for B's non-LEAVING heartbeat does not carry over to LEAVING.
        let genuine = encode(&mk_hb_for("node-b"), &key(), &other_signer());
        let mut flipped = genuine.clone();
        flipped[5] |= FLAG_LEAVING;
        assert_eq!(
            open(&retag(&flipped), Some(&b)),
            Err(DecodeError::BadSignature)
        );
    }

    #[test]
    fn an_unsigned_v2_heartbeat_is_rejected_when_the_lease_has_a_key_and_accepted_when_not() {
        let v2 = encode_v2(&mk_hb_for("node-b"), &key());
        let unverified = decode(&v2, &key()).unwrap();
        assert!(!unverified.is_signed());
        assert_eq!(
            unverified
                .clone()
                .verify(Some(&other_signer().verifying_key())),
            Err(DecodeError::Unsigned)
        );
        // A previous-version speaker (its Lease publishes no key): the HMAC is enough.
        assert_eq!(unverified.verify(None), Ok(mk_hb_for("node-b")));
        // So is a signed one (a restarted speaker whose new Lease we have not seen yet).
        let v3 = encode(&mk_hb_for("node-b"), &key(), &other_signer());
        assert_eq!(open(&v3, None), Ok(mk_hb_for("node-b")));
    }

    #[test]
    fn a_tampered_byte_breaks_the_signature() {
        let a = signer().verifying_key();
        let good = enc(&mk_hb());
        assert_eq!(open(&good, Some(&a)), Ok(mk_hb()));
        let sig_at = good.len() - TAG_LEN - SIG_LEN;
        // Every byte of the body after the version, and of the signature, changed and
        // re-tagged with the cluster key: the signature no longer verifies.
        for i in (5..sig_at).chain(sig_at..good.len() - TAG_LEN) {
            let mut bytes = good.clone();
            bytes[i] ^= 0x01;
            let got = open(&retag(&bytes), Some(&a));
            match got {
                Err(DecodeError::BadSignature | DecodeError::Malformed { .. }) => {}
                other => panic!("byte {i}: {other:?}"),
            }
            // Flags, incarnation, sequence and the signature parse whatever their value.
            if i >= sig_at || i < HEADER_LEN - 1 {
                assert_eq!(got, Err(DecodeError::BadSignature), "byte {i}");
            }
        }
        // Dropping the signature to pass as version 2 is "unsigned", not accepted.
        let mut downgraded = good[..sig_at].to_vec();
        downgraded[4] = VERSION_V2;
        assert_eq!(
            open(&sign(&downgraded), Some(&a)),
            Err(DecodeError::Unsigned)
        );
    }

    #[test]
    fn decode_verified_asks_for_the_key_of_the_claimed_sender() {
        let b = other_signer();
        let bytes = encode(&mk_hb_for("node-b"), &key(), &b);
        let mut asked = None;
        let got = decode_verified(&bytes, &[key()], |node| {
            asked = Some(node.to_owned());
            Some(b.verifying_key())
        });
        assert_eq!(got, Ok(mk_hb_for("node-b")));
        assert_eq!(asked.as_deref(), Some("node-b"));
        let wrong = decode_verified(&bytes, &[key()], |_| Some(signer().verifying_key()));
        assert_eq!(wrong, Err(DecodeError::BadSignature));
        let untagged = decode_verified(&bytes, &[], |_| {
            unreachable!("no key lookup before the HMAC")
        });
        assert_eq!(untagged, Err(DecodeError::BadTag));
    }

    proptest! {
        #[test]
        fn prop_round_trip(hb in arb_heartbeat()) {
            let bytes = enc(&hb);
            prop_assert!(bytes.len() <= MAX_LEN);
            prop_assert_eq!(open_a(&bytes), Ok(hb.clone()));
            let v2 = encode_v2(&hb, &key());
            prop_assert_eq!(open(&v2, None), Ok(hb));
        }

        #[test]
        fn prop_any_single_byte_flip_is_rejected(
            hb in arb_heartbeat(),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let mut bytes = enc(&hb);
            let i = pos.index(bytes.len());
            bytes[i] ^= mask;
            prop_assert!(open_a(&bytes).is_err());
        }

        #[test]
        fn prop_any_change_by_a_holder_of_the_cluster_key_is_rejected(
            hb in arb_heartbeat(),
            pos in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            // The attacker re-tags after the change: only the signature stands in the way.
            let good = enc(&hb);
            let mut bytes = good[..good.len() - TAG_LEN].to_vec();
            let i = pos.index(bytes.len());
            bytes[i] ^= mask;
            prop_assert!(open_a(&sign(&bytes)).is_err());
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = open_a(&bytes);
            let _ = open(&bytes, None);
        }

        #[test]
        fn prop_arbitrary_signed_bodies_never_panic_and_are_canonical(
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            // Valid magic, version and tag, random fields: exercises the body parser itself.
            let bytes = sign(&raw_body(&tail));
            if let Ok(hb) = open(&bytes, None) {
                prop_assert_eq!(encode_v2(&hb, &key()), bytes);
            }
            let bytes = sign_v3(&raw_body_v(VERSION, &tail));
            if let Ok(hb) = open_a(&bytes) {
                prop_assert_eq!(enc(&hb), bytes);
            }
        }
    }
}
