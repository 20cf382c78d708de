//! Heartbeats built from fuzzer-chosen fields: encode, decode, compare; then break them.
//!
//! Properties: every heartbeat `Heartbeat::new`/`with_heard` accept encodes within one
//! datagram and decodes to itself, signed (version 3, verified under the sender's key) and
//! unsigned (version 2, accepted only when no key is published); a refused one breaks a rule
//! `check_node`/`check_interface` name; any single byte flip is rejected; a flip re-tagged
//! with the cluster key (an insider without the sender's key) never verifies as signed, and
//! when no key is published it decodes to a heartbeat other than the original unless it only
//! touched reserved flag bits.
#![no_main]

use std::sync::LazyLock;

use ferrolb_fuzz::liveness::codec::{
    self, DecodeError, Heartbeat, Key, MAX_LEN, SigningKey, TAG_LEN, VerifyingKey,
};
use ferrolb_fuzz::roundtrip::Input;
use ferrolb_fuzz::{key, keys, signer, tag};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    key: Key,
    keys: [Key; 2],
    signer: SigningKey,
    published: VerifyingKey,
    someone_else: VerifyingKey,
}

static F: LazyLock<Fixture> = LazyLock::new(|| Fixture {
    key: key(),
    keys: keys(),
    signer: signer(),
    published: signer().verifying_key(),
    someone_else: SigningKey::from_bytes(&[9; 32]).verifying_key(),
});

/// Decodes with the keys the speaker would hold and verifies with `published`.
fn open(bytes: &[u8], published: Option<&VerifyingKey>) -> Result<Heartbeat, DecodeError> {
    codec::decode_any(bytes, &F.keys)?.verify(published)
}

fuzz_target!(|data: &[u8]| {
    let Ok(i) = Input::from_bytes(data) else {
        return;
    };
    let Some(hb) = i.build() else { return };
    let f = &*F;

    let signed = codec::encode(&hb, &f.key, &f.signer);
    assert!(signed.len() <= MAX_LEN);
    assert_eq!(open(&signed, Some(&f.published)), Ok(hb.clone()));
    assert_eq!(open(&signed, None), Ok(hb.clone()));
    assert_eq!(
        open(&signed, Some(&f.someone_else)),
        Err(DecodeError::BadSignature)
    );

    let unsigned = codec::encode_v2(&hb, &f.key);
    assert_eq!(unsigned.len() + codec::SIG_LEN, signed.len());
    assert_eq!(open(&unsigned, None), Ok(hb.clone()));
    assert_eq!(
        open(&unsigned, Some(&f.published)),
        Err(DecodeError::Unsigned)
    );

    for (bytes, sig_len) in [(&signed, codec::SIG_LEN), (&unsigned, 0)] {
        // Any flip: length, magic, version or tag catches it.
        let at = i.flip_at % bytes.len();
        let mut flipped = bytes.clone();
        flipped[at] ^= i.flip_mask;
        assert!(open(&flipped, None).is_err(), "flip at {at} accepted");

        // A flip before the tag, re-tagged with the cluster key.
        let at = i.flip_at % (bytes.len() - TAG_LEN);
        let mut body = bytes[..bytes.len() - TAG_LEN].to_vec();
        body[at] ^= i.flip_mask;
        let forged = tag(&body);
        assert!(
            open(&forged, Some(&f.published)).is_err(),
            "insider flip at {at} verified"
        );
        let in_body = at < bytes.len() - TAG_LEN - sig_len;
        if let (true, Ok(other)) = (in_body, open(&forged, None)) {
            let reserved_only = at == 5 && i.flip_mask & 0x0f == 0;
            assert_eq!(
                other == hb,
                reserved_only,
                "flip at {at} decoded to {other:?}"
            );
        }
    }
});
