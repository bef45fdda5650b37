//! Fuzzes one control request line: `tunl::control::parse_request`.
//!
//! Never panics; a refusal says why. An accepted request, written back as
//! JSON (as the CLI's client writes it), parses to the same request, with or
//! without the newline that ends it on the socket.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunl::control::{Request, parse_request};

fuzz_target!(|data: &[u8]| {
    let request = match parse_request(data) {
        Ok(r) => r,
        Err(message) => {
            assert!(!message.is_empty(), "a refusal without a reason");
            return;
        }
    };
    let _ = request.to_string();
    let mut line = serde_json::to_vec(&request).expect("a request serialises");
    assert_eq!(parse_request(&line).as_ref(), Ok(&request), "round trip");
    line.push(b'\n');
    assert_eq!(
        parse_request(&line).as_ref(),
        Ok(&request),
        "with its newline"
    );
    let value = serde_json::to_value(&request).expect("a request serialises");
    let back: Request = serde_json::from_value(value).expect("its JSON value deserialises");
    assert_eq!(back, request, "through a JSON value");
});
