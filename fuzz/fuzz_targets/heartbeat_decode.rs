//! The heartbeat decoder (`liveness::codec::decode_any`, then `Unverified::verify`) on
//! arbitrary datagrams, each tried twice: as received, and re-tagged with the cluster key (its
//! last 32 bytes replaced by the right HMAC) as a holder of that key could send it, so that
//! mutations reach the body parser and the signature check.
//!
//! Properties: never panics; `decode_any` with the previous key first agrees with `decode`;
//! an accepted datagram re-encodes to the same bytes (canonical encoding; reserved bits of the
//! flags byte aside, see below); a version-3 datagram verifies under the sender's public key
//! only if it is exactly what the sender signed, and a version-2 one never does when a key is
//! published.
#![no_main]

use std::sync::LazyLock;

use ferrolb_fuzz::liveness::codec::{
    self, DecodeError, Key, SigningKey, TAG_LEN, VERSION, VERSION_V2, VerifyingKey,
};
use ferrolb_fuzz::{key, keys, signer, tag};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    key: Key,
    keys: [Key; 2],
    signer: SigningKey,
    published: VerifyingKey,
}

static F: LazyLock<Fixture> = LazyLock::new(|| Fixture {
    key: key(),
    keys: keys(),
    signer: signer(),
    published: signer().verifying_key(),
});

/// Flag bits of byte 5 the codec defines; the others are "sent as 0, ignored on receipt".
const KNOWN_FLAGS: u8 = 0x0f;

fn check(bytes: &[u8]) {
    let f = &*F;
    let any = codec::decode_any(bytes, &f.keys);
    let one = codec::decode(bytes, &f.key);
    match (&any, &one) {
        (Ok(a), Ok(b)) => assert_eq!(a.clone().verify(None), b.clone().verify(None)),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("decode_any {any:?} but decode {one:?}"),
    }
    let Ok(unverified) = one else { return };
    let hb = unverified
        .clone()
        .verify(None)
        .expect("no published key: the HMAC suffices");
    assert_eq!(unverified.node(), hb.node());
    let authenticated = &bytes[..bytes.len() - TAG_LEN];
    match bytes[4] {
        VERSION_V2 => {
            assert!(!unverified.is_signed());
            assert_eq!(
                unverified.verify(Some(&f.published)),
                Err(DecodeError::Unsigned)
            );
            let mut canonical = authenticated.to_vec();
            canonical[5] &= KNOWN_FLAGS;
            assert_eq!(
                codec::encode_v2(&hb, &f.key),
                tag(&canonical),
                "not canonical"
            );
        }
        VERSION => {
            assert!(unverified.is_signed());
            match unverified.verify(Some(&f.published)) {
                Ok(verified) => {
                    assert_eq!(verified, hb);
                    // Deterministic signature: only what the sender signed verifies.
                    assert_eq!(codec::encode(&hb, &f.key, &f.signer), bytes, "forged");
                }
                Err(e) => assert_eq!(e, DecodeError::BadSignature),
            }
        }
        v => panic!("accepted version {v}"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    check(bytes);
    if bytes.len() >= TAG_LEN {
        let retagged = tag(&bytes[..bytes.len() - TAG_LEN]);
        if retagged != bytes {
            check(&retagged);
        }
    }
});
