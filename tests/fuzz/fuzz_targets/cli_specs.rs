//! The command line's spec strings: --drive, --net, --vsock, --entropy,
//! --balloon, a guest MAC and the kernel command line check.

#![no_main]

use flint::config::services::{parse_balloon_flag, parse_entropy_flag, parse_vsock_flag};
use flint::config::{parse_drive_flag, parse_net_flag, validate_drives, validate_nets};
use libfuzzer_sys::fuzz_target;

// The first byte picks the parser; the rest is the flag's value.
fuzz_target!(|bytes: &[u8]| {
    let Some((&which, rest)) = bytes.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(rest) else {
        return;
    };
    let error = match which % 7 {
        0 => parse_drive_flag(value, usize::from(which))
            .and_then(|d| validate_drives(&[d]))
            .err(),
        1 => parse_net_flag(value, usize::from(which))
            .and_then(|n| validate_nets(&[n]))
            .err(),
        2 => parse_vsock_flag(value).and_then(|v| v.validate()).err(),
        3 => parse_entropy_flag(value).and_then(|e| e.validate()).err(),
        4 => parse_balloon_flag(value)
            .and_then(|b| b.validate(128))
            .err(),
        5 => {
            let _ = devices::virtio::net::parse_mac(value).map(devices::virtio::net::validate_mac);
            None
        }
        _ => {
            let _ = flint::boot::check_cmdline(value);
            None
        }
    };
    if let Some(e) = error {
        let _ = e.to_string();
    }
});
