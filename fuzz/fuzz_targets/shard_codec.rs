//! An AllocationShard's payload, as anyone with write access to the API could leave it:
//! the raw bytes, and the base64 text with a CRC. Never a panic; what decodes encodes back
//! to a payload that decodes to the same shard.
#![no_main]

use base64::Engine as _;
use danm_core::ShardBits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bits) = ShardBits::from_bytes(data) {
        let encoded = bits.encode();
        let again = ShardBits::decode(&encoded.payload, encoded.crc32).expect("round trip");
        assert_eq!(
            again.iter().collect::<Vec<_>>(),
            bits.iter().collect::<Vec<_>>()
        );
    }
    // As text, with the CRC of its decoded bytes when it is base64 (so the codec behind the
    // CRC check is reached), and with a CRC taken from the input otherwise.
    let text = String::from_utf8_lossy(data);
    let crc = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map(|raw| crc32fast::hash(&raw))
        .unwrap_or_else(|_| u32::from_le_bytes([data.first().copied().unwrap_or(0), 1, 2, 3]));
    let _ = ShardBits::decode(&text, crc);
});
