//! ARP parser (`wire::arp`) on arbitrary frames.
//!
//! Properties: never panics; whatever parses re-emits to a frame that parses to the same
//! value and whose ARP body is byte-for-byte the input's (the codec drops nothing it
//! accepts but padding and the Ethernet addresses, which emit derives); the frame and body
//! parsers agree; the error names the first rule broken; the reply built from a request
//! parses back as the reply it is.
#![no_main]

use ferrolb_fuzz::wire::arp::{ARP_LEN, ArpOp, ArpRepr, FRAME_LEN};
use ferrolb_fuzz::wire::{ETHERNET_HEADER_LEN, ETHERTYPE_ARP, MacAddr, WireError};
use libfuzzer_sys::fuzz_target;

const OUR_MAC: MacAddr = ferrolb_fuzz::OUR_MAC;

fuzz_target!(|frame: &[u8]| {
    let parsed = ArpRepr::parse(frame);
    let is_arp = frame.len() >= ETHERNET_HEADER_LEN && frame[12..14] == ETHERTYPE_ARP.to_be_bytes();
    match parsed {
        Ok(repr) => {
            assert!(is_arp && frame.len() >= FRAME_LEN);
            let bytes = repr.to_bytes();
            assert_eq!(bytes.len(), repr.buffer_len());
            assert_eq!(ArpRepr::parse(&bytes), Ok(repr));
            assert_eq!(
                &bytes[12..FRAME_LEN],
                &frame[12..FRAME_LEN],
                "not canonical"
            );
            assert_eq!(&bytes[6..12], &repr.sender_mac.octets());
            assert_eq!(ArpRepr::parse_arp(&frame[ETHERNET_HEADER_LEN..]), Ok(repr));
            // A buffer one byte short is refused, not overrun.
            let mut short = [0u8; FRAME_LEN - 1];
            assert_eq!(
                repr.emit(&mut short),
                Err(WireError::BufferTooSmall {
                    needed: FRAME_LEN,
                    got: FRAME_LEN - 1
                })
            );
            assert!(!(repr.is_probe() && repr.is_gratuitous()));
            if repr.op == ArpOp::Request {
                let reply = ArpRepr::reply_to(&repr, OUR_MAC);
                let back = ArpRepr::parse(&reply.to_bytes()).expect("a reply parses");
                assert_eq!(back, reply);
                assert_eq!(back.op, ArpOp::Reply);
                assert_eq!((back.sender_mac, back.sender_ip), (OUR_MAC, repr.target_ip));
                assert_eq!(
                    (back.target_mac, back.target_ip),
                    (repr.sender_mac, repr.sender_ip)
                );
            }
        }
        Err(WireError::Truncated) => {
            assert!(frame.len() < FRAME_LEN);
        }
        Err(WireError::EtherType(t)) => {
            assert!(!is_arp);
            assert_eq!(t.to_be_bytes(), [frame[12], frame[13]]);
        }
        Err(e) => {
            // Field errors only once the whole ARP body is there.
            assert!(
                is_arp && frame.len() >= ETHERNET_HEADER_LEN + ARP_LEN,
                "{e:?}"
            );
            assert_eq!(ArpRepr::parse_arp(&frame[ETHERNET_HEADER_LEN..]), Err(e));
        }
    }
});
