//! A whole CNI call: the environment (`CNI_COMMAND`, `CNI_ARGS`, ...) and stdin, as the
//! runtime passes them. The input is `NAME=value` lines, an empty line, then stdin. Never a
//! panic; `CNI_ARGS` alone is parsed too.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, stdin) = text.split_once("\n\n").unwrap_or((&text, ""));
    let env: BTreeMap<String, String> = head
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let _ = danm_cni::protocol::parse_args(head);
    let lookup = |name: &str| env.get(name).cloned();
    let _ = danm_cni::protocol::Request::parse(&lookup, stdin.as_bytes());
});
