//! What the fuzz targets share: the speaker's pure parsers, compiled here from their own
//! source files, and fixtures (keys, an announce set, an ICMPv6 checksum written
//! independently of the codec's).
//!
//! The modules keep the speaker's paths (`crate::wire`, ...) so the included files compile
//! unchanged. If one of them starts using another speaker module or crate, add it here (or
//! to `Cargo.toml`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[path = "../../speaker/src/wire/mod.rs"]
pub mod wire;

#[path = "../../speaker/src/liveness/codec.rs"]
pub mod codec;
#[path = "../../speaker/src/dataplane/responder.rs"]
pub mod responder;

/// `speaker::dataplane`, reduced to the responder's pure decision.
pub mod dataplane {
    pub use super::responder::{AnnounceSet, Announced, DropReason, decide_arp, decide_ndp};
}

/// `speaker::core`, reduced to the interface sets the responder reads.
pub mod core {
    /// The interfaces an IP is announced on, shared (`speaker::core::Interfaces`).
    pub type Interfaces = std::sync::Arc<std::collections::BTreeSet<String>>;
}

/// `speaker::liveness`, reduced to the heartbeat codec.
pub mod liveness {
    pub use super::codec;
}

use ed25519_dalek::SigningKey;
use hmac::{Hmac, KeyInit, Mac};
use liveness::codec::Key;
use sha2::Sha256;
use wire::MacAddr;

/// The cluster key every heartbeat target uses (32 bytes, like the Secret the chart makes).
pub const TEST_KEY: [u8; 32] = *b"ferrolb-fuzz-heartbeat-key-32by!";
/// A second accepted key (the previous one during a rotation), tried first by `decode_any`.
pub const OTHER_KEY: [u8; 16] = *b"previous-key-16b";
/// Seed of the sender's Ed25519 key (per start in the speaker, fixed here).
pub const SIGNER_SEED: [u8; 32] = [7; 32];

/// The cluster key.
pub fn key() -> Key {
    Key::new(&TEST_KEY).expect("32-byte key")
}

/// Keys in the order the speaker passes them during a rotation: another one, then ours.
pub fn keys() -> [Key; 2] {
    [Key::new(&OTHER_KEY).expect("16-byte key"), key()]
}

/// The sender's signing key.
pub fn signer() -> SigningKey {
    SigningKey::from_bytes(&SIGNER_SEED)
}

/// `bytes` followed by HMAC-SHA256(TEST_KEY, bytes): what a holder of the cluster key can
/// send. Computed here, not by the codec, so the targets reach the body parser.
pub fn tag(bytes: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&TEST_KEY).expect("any key length");
    mac.update(bytes);
    let mut out = bytes.to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// MAC of the receiving interface in the responder targets.
pub const OUR_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x11);
/// Interfaces the responder target picks from (the last one announces nothing).
pub const IFACES: [&str; 3] = ["eth0", "eth1", "eth2"];

/// IPs this node announces and where: v4 and v6, on one, both or other interfaces. Real
/// frames in the seed corpus ask for these.
pub fn announce_set() -> dataplane::AnnounceSet {
    let ifaces = |names: &[&str]| -> core::Interfaces {
        std::sync::Arc::new(names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>())
    };
    let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
    dataplane::AnnounceSet::new(BTreeMap::from([
        (ip("198.51.100.11"), ifaces(&["eth0"])),
        (ip("203.0.113.10"), ifaces(&["eth0", "eth1"])),
        (ip("203.0.113.11"), ifaces(&["eth1"])),
        (ip("2001:db8:100::11"), ifaces(&["eth0"])),
        (ip("2001:db8:200::10"), ifaces(&["eth0", "eth1"])),
        (ip("2001:db8:200::11"), ifaces(&["eth1"])),
    ]))
}

/// Offsets in an Ethernet/IPv6/ICMPv6 frame.
const IP6: usize = 14;
const ICMP6: usize = IP6 + 40;

/// The ICMPv6 checksum (RFC 4443 §2.3) of `frame`, over the IPv6 payload length the header
/// claims, or `None` when the frame is too short to carry that payload and a checksum.
/// Written from the RFC, independently of `wire::ndp`.
pub fn icmpv6_checksum(frame: &[u8]) -> Option<u16> {
    let payload_len = usize::from(u16::from_be_bytes([
        *frame.get(IP6 + 4)?,
        *frame.get(IP6 + 5)?,
    ]));
    let icmp = frame.get(ICMP6..ICMP6 + payload_len)?;
    if icmp.len() < 4 {
        return None;
    }
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |&b| u64::from(b));
        }
    };
    add(&frame[IP6 + 8..IP6 + 40]); // source and destination addresses
    add(&(payload_len as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&icmp[..2]);
    add(&icmp[4..]); // the checksum field counts as zero
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    Some(!(sum as u16))
}

/// Writes the right ICMPv6 checksum into `frame` when it is long enough to hold one, so a
/// mutated frame gets past the checksum to the NDP body and options.
pub fn fix_icmpv6_checksum(frame: &mut [u8]) {
    if let Some(sum) = icmpv6_checksum(frame) {
        frame[ICMP6 + 2..ICMP6 + 4].copy_from_slice(&sum.to_be_bytes());
    }
}

/// The `heartbeat_roundtrip` target's input: heartbeat fields and a byte flip, drawn from
/// the fuzzer's bytes (shared with `examples/seeds.rs`, which searches for valid ones).
pub mod roundtrip {
    use std::collections::BTreeSet;

    use libfuzzer_sys::arbitrary::{self, Unstructured};

    use crate::codec::{Heard, Heartbeat, MAX_INTERFACES, Malformed, check_interface, check_node};

    /// Fields as the fuzzer chose them, valid or not.
    #[derive(Debug)]
    pub struct Input {
        pub node: String,
        pub incarnation: u64,
        pub seq: u64,
        pub interfaces: Vec<String>,
        /// LEAVING, SERVING, SETTLED, ESTABLISHED in bits 0–3.
        pub flags: u8,
        /// (id, age, SERVING | SETTLED << 1); sorted, deduplicated and cut to fit by `build`.
        pub heard: Vec<(u32, u16, u8)>,
        /// Where to flip bits (modulo the length) and which (never 0).
        pub flip_at: usize,
        pub flip_mask: u8,
    }

    impl Input {
        pub fn from_bytes(data: &[u8]) -> arbitrary::Result<Input> {
            let mut u = Unstructured::new(data);
            Ok(Input {
                node: u.arbitrary()?,
                incarnation: u.arbitrary()?,
                seq: u.arbitrary()?,
                interfaces: u.arbitrary()?,
                flags: u.arbitrary()?,
                heard: u.arbitrary()?,
                flip_at: u.arbitrary()?,
                flip_mask: u.arbitrary::<u8>()?.max(1),
            })
        }

        /// The heartbeat, or `None` when `Heartbeat::new` refuses the fields, in which case
        /// it asserts that the refusal is one of the rules `check_node`/`check_interface` and
        /// the interface limit name.
        pub fn build(&self) -> Option<Heartbeat> {
            let interfaces: BTreeSet<String> = self.interfaces.iter().cloned().collect();
            let hb = match Heartbeat::new(
                self.node.clone(),
                self.incarnation,
                self.seq,
                interfaces.clone(),
            ) {
                Ok(hb) => hb,
                Err(e) => {
                    let too_many = Malformed::TooManyInterfaces {
                        count: interfaces.len(),
                    };
                    let named = check_node(&self.node).err() == Some(e.clone())
                        || interfaces
                            .iter()
                            .any(|n| check_interface(n).err() == Some(e.clone()))
                        || e == too_many;
                    assert!(named, "refused with {e:?}, which no rule names");
                    if check_node(&self.node).is_ok() && interfaces.len() > MAX_INTERFACES {
                        assert_eq!(e, too_many);
                    }
                    return None;
                }
            };
            let mut heard: Vec<Heard> = self
                .heard
                .iter()
                .map(|&(id, age_ms, f)| Heard {
                    id,
                    age_ms,
                    serving: f & 1 != 0,
                    settled: f & 2 != 0,
                })
                .collect();
            heard.sort_by_key(|h| h.id);
            heard.dedup_by_key(|h| h.id);
            heard.truncate(hb.heard_capacity());
            let hb = hb
                .with_leaving(self.flags & 1 != 0)
                .with_state(self.flags & 2 != 0, self.flags & 4 != 0)
                .with_established(self.flags & 8 != 0)
                .with_heard(heard)
                .expect("sorted, deduplicated and within capacity");
            Some(hb)
        }
    }
}
