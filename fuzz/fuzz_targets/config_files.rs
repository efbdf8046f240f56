//! The server's files: the TOML config file and the allow-lists, parsed by the
//! very module `mftq serve` uses (`cmd/config_file.rs`). Each parses or gives an
//! error, never panics; every key an allow-list yields prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../cmd/config_file.rs"]
mod config_file;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = config_file::parse_config(text);
    if let Ok(keys) = config_file::parse_allow_list(text) {
        for key in keys {
            assert_eq!(key.to_string().parse::<flow::PeerKey>().ok(), Some(key));
        }
    }
});
