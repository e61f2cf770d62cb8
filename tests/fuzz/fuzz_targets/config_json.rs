//! The JSON config file: parsing (Firecracker's keys) and the checks that
//! turn it into a VM description.

#![no_main]

use std::path::Path;

use flint::config::{parse_file_config, resolve, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let path = Path::new("fuzz.json");
    match parse_file_config(path, text) {
        Ok(file) => {
            let _ = file.unsupported_key();
            if let Err(e) = resolve(file, Overrides::default()) {
                let _ = e.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
