//! Writes the seed corpus, fuzz/corpus/<target>/<name>: frames captured from Linux in the lab
//! (the speaker's test vectors) and a few built with the codecs, heartbeats encoded with the
//! targets' fixed keys, and inputs the structured target turns into valid heartbeats.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds
//!
//! Deterministic: running it again rewrites the same files.

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ferrolb_fuzz::liveness::codec::{self, Heard, Heartbeat};
use ferrolb_fuzz::roundtrip::Input;
use ferrolb_fuzz::wire::MacAddr;
use ferrolb_fuzz::wire::arp::ArpRepr;
use ferrolb_fuzz::wire::ndp::NeighborSolicitRepr;
use ferrolb_fuzz::{fix_icmpv6_checksum, key, signer};

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| (b as char).to_digit(16).expect("hex digit") as u8)
        .collect();
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}

// Captured with tcpdump in a lab netns (Linux 6.18), as in speaker/src/wire/{arp,ndp}.rs.
const ARP_REQUEST: &str = "ffffffffffff 020000000021 0806 0001 0800 0604 0001
    020000000021 c6336415 000000000000 c633640b";
const ARP_REPLY: &str = "020000000021 020000000011 0806 0001 0800 0604 0002
    020000000011 c633640b 020000000021 c6336415";
const ARP_GRATUITOUS: &str = "ffffffffffff 020000000011 0806 0001 0800 0604 0001
    020000000011 c633640b 000000000000 c633640b";
const ARP_PROBE: &str = "ffffffffffff 020000000021 0806 0001 0800 0604 0001
    020000000021 00000000 000000000000 c633640b";
const NS: &str = "3333ff000011 020000000021 86dd 6000 0000 0020 3aff
    20010db8010000000000000000000021 ff0200000000000000000001ff000011
    8700 19c9 00000000 20010db8010000000000000000000011 0101 020000000021";
const NA: &str = "020000000021 020000000011 86dd 6000 0000 0020 3aff
    20010db8010000000000000000000011 20010db8010000000000000000000021
    8800 8724 60000000 20010db8010000000000000000000011 0201 020000000011";
const DAD_WITH_NONCE: &str = "3333ff000011 020000000011 86dd 6000 0000 0020 3aff
    00000000000000000000000000000000 ff0200000000000000000001ff000011
    8700 ba4c 00000000 20010db8010000000000000000000011 0e01 5a3b6013c928";
const UNSOLICITED_NA: &str = "333300000001 020000000011 86dd 6000 0000 0020 3aff
    20010db8010000000000000000000011 ff020000000000000000000000000001
    8800 f6fa 20000000 20010db8010000000000000000000011 0201 020000000011";
const NUD_PROBE: &str = "020000000011 020000000021 86dd 6000 0000 0018 3aff
    20010db8010000000000000000000021 20010db8010000000000000000000011
    8700 ec3e 00000000 20010db8010000000000000000000011";

const CLIENT_MAC: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x21);

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn heartbeat(node: &str, interfaces: &[&str], heard: &[u32]) -> Heartbeat {
    let interfaces: BTreeSet<String> = interfaces.iter().map(|s| s.to_string()).collect();
    let heard = heard
        .iter()
        .map(|&id| Heard {
            id,
            age_ms: 120,
            serving: true,
            settled: id % 2 == 0,
        })
        .collect();
    Heartbeat::new(node, 0x1873_0000_0000_0001, 42, interfaces)
        .expect("valid fields")
        .with_heard(heard)
        .expect("sorted")
}

/// A byte string the structured target turns into a valid heartbeat with at least
/// `interfaces` interfaces and `heard` heard entries: letters only, so every string it draws
/// is a valid name; found by a deterministic search.
fn roundtrip_input(interfaces: usize, heard: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ (interfaces as u64 * 7 + heard as u64);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..1_000_000 {
        let len = 40 + (next() % 400) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| b'a' + (next() % 26) as u8).collect();
        let Ok(input) = Input::from_bytes(&bytes) else {
            continue;
        };
        if let Some(hb) = input.build()
            && hb.interfaces().len() >= interfaces
            && hb.heard().len() >= heard
        {
            return bytes;
        }
    }
    panic!("no input with {interfaces} interfaces and {heard} heard entries found");
}

fn main() {
    let v4 = |s: &str| s.parse::<Ipv4Addr>().expect("literal");
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("literal");
    let frames = [
        ("request", ARP_REQUEST),
        ("reply", ARP_REPLY),
        ("gratuitous", ARP_GRATUITOUS),
        ("probe", ARP_PROBE),
    ];
    for (name, frame) in frames {
        write("arp_parse", name, &hex(frame));
    }
    let mut padded = hex(ARP_REQUEST);
    padded.resize(60, 0);
    write("arp_parse", "request_padded", &padded);

    let frames = [
        ("ns", NS),
        ("na", NA),
        ("dad_with_nonce", DAD_WITH_NONCE),
        ("unsolicited_na", UNSOLICITED_NA),
        ("nud_probe", NUD_PROBE),
    ];
    for (name, frame) in frames {
        write("ndp_parse", name, &hex(frame));
    }
    // The captured solicitation from ff02::1 (a multicast source): fuzzing found that it
    // was answered with an advertisement to a multicast address; the parser refuses it now.
    let mut from_multicast = hex(NS);
    from_multicast[22..38].copy_from_slice(&v6("ff02::1").octets());
    fix_icmpv6_checksum(&mut from_multicast);
    write(
        "ndp_parse",
        "regression_ns_multicast_source",
        &from_multicast,
    );
    write(
        "responder",
        "regression_ns_multicast_source",
        &from_multicast,
    );

    // Questions for the addresses ferrolb_fuzz::announce_set() announces, and one not.
    let who_has = |name: &str, sender: Ipv4Addr, target: &str| {
        let mut req = ArpRepr::gratuitous(v4(target), CLIENT_MAC);
        req.sender_ip = sender;
        write("responder", name, &req.to_bytes());
    };
    who_has("arp_eth0_and_eth1", v4("198.51.100.21"), "203.0.113.10");
    who_has("arp_eth1_only", v4("198.51.100.21"), "203.0.113.11");
    who_has("arp_probe", Ipv4Addr::UNSPECIFIED, "203.0.113.10");
    who_has("arp_not_announced", v4("198.51.100.21"), "203.0.113.99");
    write("responder", "arp_captured", &hex(ARP_REQUEST));
    // The same with an 802.1Q tag (VID 100) left in the frame: never answered untagged.
    let request = hex(ARP_REQUEST);
    let vlan = [&request[..12], &[0x81, 0x00, 0x00, 0x64], &request[12..]].concat();
    write("responder", "arp_vlan_tagged", &vlan);
    let client6 = v6("2001:db8:100::21");
    let ns = |src: Ipv6Addr, target: &str| {
        NeighborSolicitRepr::multicast(src, CLIENT_MAC, v6(target)).to_bytes()
    };
    write(
        "responder",
        "ns_eth0_and_eth1",
        &ns(client6, "2001:db8:200::10"),
    );
    write(
        "responder",
        "ns_eth1_only",
        &ns(client6, "2001:db8:200::11"),
    );
    write(
        "responder",
        "ns_dad",
        &ns(Ipv6Addr::UNSPECIFIED, "2001:db8:200::10"),
    );
    write("responder", "ns_captured", &hex(NS));
    write("responder", "nud_probe_captured", &hex(NUD_PROBE));

    let (key, signer) = (key(), signer());
    let minimal = heartbeat("a", &[], &[]);
    let full = heartbeat(
        "worker-1.example.com",
        &["bond0.100", "eth0", "eth1"],
        &[7, 0x1234_5678, 0xffff_fff0],
    )
    .with_state(true, true)
    .with_established(true);
    let leaving = heartbeat(
        "worker-2",
        &["eth0"],
        &[codec::node_id("worker-1.example.com")],
    )
    .with_leaving(true);
    write(
        "heartbeat_decode",
        "v3_minimal",
        &codec::encode(&minimal, &key, &signer),
    );
    write(
        "heartbeat_decode",
        "v3_full",
        &codec::encode(&full, &key, &signer),
    );
    write(
        "heartbeat_decode",
        "v3_leaving",
        &codec::encode(&leaving, &key, &signer),
    );
    write(
        "heartbeat_decode",
        "v2_full",
        &codec::encode_v2(&full, &key),
    );

    write("heartbeat_roundtrip", "plain", &roundtrip_input(0, 0));
    write("heartbeat_roundtrip", "interfaces", &roundtrip_input(2, 0));
    write("heartbeat_roundtrip", "heard", &roundtrip_input(0, 3));
    write("heartbeat_roundtrip", "both", &roundtrip_input(1, 2));
}
