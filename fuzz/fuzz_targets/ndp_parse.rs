//! NDP parsers (`wire::ndp`: Neighbor Solicitation and Advertisement, options included) on
//! arbitrary frames, each tried twice: as given, and with the ICMPv6 checksum fixed so that
//! mutations reach the body and the option walk.
//!
//! Properties: never panics; the checksum the codec wants is the one RFC 4443 gives
//! (computed independently in `ferrolb_fuzz`); whatever parses satisfies RFC 4861 §7.1
//! (hop limit 255, unicast target, DAD rules, no solicited multicast NA), re-emits to a frame
//! that parses to the same value, and, for a solicitation, the answer built from it parses
//! back as the advertisement it is.
#![no_main]

use ferrolb_fuzz::wire::WireError;
use ferrolb_fuzz::wire::ndp::{
    NDP_HOP_LIMIT, NeighborAdvertRepr, NeighborSolicitRepr, is_solicited_node_multicast,
};
use ferrolb_fuzz::{OUR_MAC, fix_icmpv6_checksum, icmpv6_checksum};
use libfuzzer_sys::fuzz_target;

fn check(frame: &[u8]) {
    let ns = NeighborSolicitRepr::parse(frame);
    let na = NeighborAdvertRepr::parse(frame);
    for err in [ns.err(), na.err()].into_iter().flatten() {
        if let WireError::Checksum { want, got } = err {
            assert_ne!(want, got);
            assert_eq!(Some(want), icmpv6_checksum(frame), "checksums disagree");
        }
    }
    assert!(
        ns.is_err() || na.is_err(),
        "one frame is both an NS and an NA"
    );
    if ns.is_ok() || na.is_ok() {
        assert_eq!(
            icmpv6_checksum(frame).map(u16::to_be_bytes),
            Some([frame[56], frame[57]])
        );
    }
    if let Ok(na) = na {
        assert!(!na.target.is_multicast());
        assert!(!(na.solicited && na.dst_ip.is_multicast()));
        let bytes = na.to_bytes();
        assert_eq!(bytes.len(), na.buffer_len());
        assert_eq!(NeighborAdvertRepr::parse(&bytes), Ok(na));
    }
    if let Ok(ns) = ns {
        assert_eq!(ns.hop_limit, NDP_HOP_LIMIT);
        assert!(!ns.target.is_multicast());
        if ns.is_dad() {
            assert!(ns.source_lladdr.is_none());
            assert!(is_solicited_node_multicast(ns.dst_ip));
        }
        let bytes = ns.to_bytes();
        assert_eq!(bytes.len(), ns.buffer_len());
        assert_eq!(NeighborSolicitRepr::parse(&bytes), Ok(ns));
        let answer = NeighborAdvertRepr::reply_to(&ns, OUR_MAC);
        let back = NeighborAdvertRepr::parse(&answer.to_bytes()).expect("our answer parses");
        assert_eq!(back, answer);
        assert_eq!(
            (back.target, back.target_lladdr, back.eth_src),
            (ns.target, OUR_MAC, OUR_MAC)
        );
        assert!(back.override_ && !back.router);
        assert_eq!(back.solicited, !ns.is_dad());
    }
}

fuzz_target!(|frame: &[u8]| {
    check(frame);
    let mut fixed = frame.to_vec();
    fix_icmpv6_checksum(&mut fixed);
    if fixed != frame {
        check(&fixed);
    }
});
