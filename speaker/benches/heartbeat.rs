//! What binding heartbeats to their node costs: `cargo bench -p ferrolb-speaker --bench heartbeat`.
//!
//! A speaker signs one heartbeat per interval (100 ms) and receives one per peer per interval
//! (N − 1 of them: 990/s at 100 speakers, 2 990/s at 300). Printed per operation, for a
//! heartbeat of a 100-node cluster (short node name, two interfaces, 99 heard entries):
//! the Ed25519 sign and verify alone, and whole datagrams as the speaker handles them
//! (encode; decode = HMAC + parse, then the signature check for version 3).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Instant;

use ferrolb_speaker::liveness::{
    Heard, Heartbeat, Key, SigningKey, decode, encode, encode_v2, generate_signing_key, node_id,
};

/// Nanoseconds per call of `f`, best of five rounds of `n` calls.
fn ns_per(n: u32, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

fn heartbeat(peers: u32) -> Heartbeat {
    let ifaces: BTreeSet<String> = ["bond0", "eth0"].iter().map(|s| s.to_string()).collect();
    let hb = Heartbeat::new("worker-042", 0x1234_5678_9abc_def0, 1_000_000, ifaces)
        .unwrap()
        .with_state(true, true)
        .with_established(true);
    let mut heard: Vec<Heard> = (0..peers)
        .map(|i| Heard {
            id: node_id(&format!("worker-{i:03}")),
            age_ms: 40,
            serving: true,
            settled: true,
        })
        .collect();
    heard.sort_by_key(|h| h.id);
    heard.dedup_by_key(|h| h.id);
    hb.with_heard(heard).unwrap()
}

fn main() {
    let key = Key::new(b"a-32-byte-cluster-heartbeat-key!").unwrap();
    let signer: SigningKey = generate_signing_key().unwrap();
    let public = signer.verifying_key();
    let hb = heartbeat(99);
    let v3 = encode(&hb, &key, &signer);
    let v2 = encode_v2(&hb, &key);
    println!(
        "heartbeat of a 100-node cluster: {} bytes signed (v3), {} bytes HMAC only (v2)",
        v3.len(),
        v2.len()
    );

    let signed_part = &v3[..v3.len() - 32 - 64];
    let signature = {
        use ed25519_dalek::Signer as _;
        signer.sign(signed_part)
    };
    let sign = ns_per(2_000, || {
        use ed25519_dalek::Signer as _;
        black_box(signer.sign(black_box(signed_part)));
    });
    let verify = ns_per(2_000, || {
        public
            .verify_strict(black_box(signed_part), &signature)
            .unwrap();
    });
    println!("ed25519 sign:                      {sign:>9.0} ns");
    println!("ed25519 verify (strict):           {verify:>9.0} ns");

    let enc3 = ns_per(2_000, || {
        black_box(encode(black_box(&hb), &key, &signer));
    });
    let enc2 = ns_per(20_000, || {
        black_box(encode_v2(black_box(&hb), &key));
    });
    println!("encode v3 (sign + HMAC):           {enc3:>9.0} ns  (once per interval)");
    println!("encode v2 (HMAC):                  {enc2:>9.0} ns");

    let dec3 = ns_per(2_000, || {
        let hb = decode(black_box(&v3), &key).unwrap();
        black_box(hb.verify(Some(&public)).unwrap());
    });
    let dec2 = ns_per(20_000, || {
        let hb = decode(black_box(&v2), &key).unwrap();
        black_box(hb.verify(None).unwrap());
    });
    let mut forged = v3.clone();
    let n = forged.len();
    forged[n - 33] ^= 1; // a signature byte; the tag then fails first
    let bad_tag = ns_per(20_000, || {
        black_box(decode(black_box(&forged), &key).is_err());
    });
    println!("decode + verify v3, per datagram:  {dec3:>9.0} ns");
    println!("decode v2 (HMAC only):             {dec2:>9.0} ns");
    println!("bad tag (LAN host without the key):{bad_tag:>9.0} ns");
    for peers in [100u32, 300] {
        let per_s = f64::from(peers - 1) * 10.0;
        println!(
            "{peers} speakers: {per_s:.0} datagrams/s in → {:.1} ms of CPU per second verifying \
             ({:.1} % of one core), + {:.2} ms signing",
            per_s * dec3 / 1e6,
            per_s * dec3 / 1e7,
            10.0 * enc3 / 1e6
        );
    }
}
