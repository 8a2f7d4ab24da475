//! The `danm.io/interfaces` annotation, as any tenant who can create a pod writes it: never
//! a panic; what is accepted has exactly one network per connection, sequences in order,
//! and no field with whitespace around it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(connections) = danm_core::interfaces::parse_annotation(&text, "default") {
        for (i, c) in connections.iter().enumerate() {
            assert_eq!(c.sequence, i);
            assert!(!c.network.name.is_empty());
            assert_eq!(c.network.name.trim(), c.network.name);
        }
    }
});
