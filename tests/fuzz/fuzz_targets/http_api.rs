//! The API's HTTP side: one request's head (httparse), its body limit,
//! and the route and body decoding into an API request.

#![no_main]

use flint::api::server::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some(Ok(req)) = parse_request(bytes) {
        let _ = req.describe();
    }
});
