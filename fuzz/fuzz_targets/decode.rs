//! Arbitrary bytes into the decoder: it must never panic, and whatever it accepts must
//! survive `encode` and `decode` unchanged, message by message, and packed back into one
//! datagram.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pchat::wire::{decode, decode_all, encode, MAGIC, MAX_DATAGRAM, VERSION};

fuzz_target!(|data: &[u8]| {
    let single = decode(data);
    let Ok(messages) = decode_all(data) else {
        assert!(single.is_err(), "decode accepts what decode_all refuses");
        return;
    };
    assert!(!messages.is_empty());
    assert_eq!(
        single.is_ok(),
        messages.len() == 1,
        "decode and decode_all disagree"
    );
    let mut packed = vec![MAGIC, VERSION];
    for msg in &messages {
        let bytes = encode(msg);
        let again = decode(&bytes).unwrap_or_else(|e| {
            panic!(
                "{msg:?} decoded from {data:02x?}, re-encoded as {bytes:02x?}, does not decode: {e}"
            )
        });
        assert_eq!(&again, msg, "round trip changed the message");
        assert_eq!(encode(&again), bytes, "re-encoding is not stable");
        packed.extend_from_slice(&bytes[2..]);
    }
    if packed.len() <= MAX_DATAGRAM {
        assert_eq!(decode_all(&packed).as_ref(), Ok(&messages));
    }
});
