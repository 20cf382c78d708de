//! The responder's decision (`dataplane::responder`: `decide_arp`, `decide_ndp`) on
//! arbitrary frames, as received on each of three interfaces, NDP frames also with their
//! ICMPv6 checksum fixed.
//!
//! Properties: never panics; every drop has a label; a reply, when there is one, is for an
//! IP announced on the receiving interface, comes from that interface's MAC, answers the
//! frame's asker, and parses back as a valid ARP reply / Neighbor Advertisement equal to
//! itself; reasons that do not depend on the interface are the same on all of them.
#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use ferrolb_fuzz::dataplane::{AnnounceSet, Announced, DropReason, decide_arp, decide_ndp};
use ferrolb_fuzz::wire::arp::{ArpOp, ArpRepr};
use ferrolb_fuzz::wire::ndp::{ALL_NODES, NeighborAdvertRepr, NeighborSolicitRepr};
use ferrolb_fuzz::{
    IFACES, OUR_MAC, announce_set, fix_icmpv6_checksum, 
};
use libfuzzer_sys::fuzz_target;

/// Drops decided before the interface matters.
fn same_everywhere<T: PartialEq + std::fmt::Debug>(results: &[Result<T, DropReason>]) {
    let per_iface = |r: &DropReason| {
        matches!(
            r,
            DropReason::NotAnnounced | DropReason::WrongInterface | DropReason::Gratuitous
        )
    };
    if let Some(Err(r)) = results
        .iter()
        .find(|r| matches!(r, Err(r) if !per_iface(r)))
    {
        for other in results {
            assert_eq!(other.as_ref().err(), Some(r));
        }
    }
}

fn check_label(r: &DropReason) {
    assert_eq!(DropReason::LABELS[r.index()], r.as_str());
}

fn arp(frame: &[u8], set: &AnnounceSet) {
    let results: Vec<_> = IFACES
        .iter()
        .map(|i| decide_arp(frame, OUR_MAC, i, set))
        .collect();
    same_everywhere(&results);
    for (iface, result) in IFACES.iter().zip(&results) {
        let reply = match result {
            Ok(reply) => *reply,
            Err(r) => {
                check_label(r);
                continue;
            }
        };
        let request = ArpRepr::parse(frame).expect("answered frames are ARP");
        assert_eq!(request.op, ArpOp::Request);
        assert_ne!(request.sender_mac, OUR_MAC);
        assert!(!request.is_gratuitous());
        assert_eq!(
            set.lookup(IpAddr::V4(request.target_ip), iface),
            Announced::Here
        );
        let back = ArpRepr::parse(&reply.to_bytes()).expect("the reply parses");
        assert_eq!(back, reply);
        assert_eq!(back.op, ArpOp::Reply);
        assert_eq!(
            (back.sender_mac, back.sender_ip),
            (OUR_MAC, request.target_ip)
        );
        assert_eq!(
            (back.target_mac, back.target_ip),
            (request.sender_mac, request.sender_ip)
        );
        assert_eq!(
            back.ethernet_dst(),
            if request.sender_mac.is_zero() {
                ferrolb_fuzz::wire::MacAddr::broadcast()
            } else {
                request.sender_mac
            }
        );
    }
}

fn ndp(frame: &[u8], set: &AnnounceSet) {
    let results: Vec<_> = IFACES
        .iter()
        .map(|i| decide_ndp(frame, OUR_MAC, i, set))
        .collect();
    same_everywhere(&results);
    for (iface, result) in IFACES.iter().zip(&results) {
        let na = match result {
            Ok(na) => *na,
            Err(r) => {
                check_label(r);
                continue;
            }
        };
        let ns = NeighborSolicitRepr::parse(frame).expect("answered frames are solicitations");
        assert_ne!(ns.eth_src, OUR_MAC);
        assert_eq!(set.lookup(IpAddr::V6(ns.target), iface), Announced::Here);
        let back = NeighborAdvertRepr::parse(&na.to_bytes()).expect("the advertisement parses");
        assert_eq!(back, na);
        assert_eq!((back.eth_src, back.target_lladdr), (OUR_MAC, OUR_MAC));
        assert_eq!((back.src_ip, back.target), (ns.target, ns.target));
        assert!(back.override_ && !back.router);
        if ns.is_dad() {
            assert_eq!((back.dst_ip, back.solicited), (ALL_NODES, false));
        } else {
            assert_eq!((back.dst_ip, back.solicited), (ns.src_ip, true));
            assert_eq!(back.eth_dst, ns.source_lladdr.unwrap_or(ns.eth_src));
        }
    }
}

static SET: LazyLock<AnnounceSet> = LazyLock::new(announce_set);

fuzz_target!(|frame: &[u8]| {
    let set = &*SET;
    arp(frame, set);
    ndp(frame, set);
    let mut fixed = frame.to_vec();
    fix_icmpv6_checksum(&mut fixed);
    if fixed != frame {
        ndp(&fixed, set);
    }
});
