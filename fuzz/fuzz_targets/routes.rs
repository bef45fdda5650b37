//! Fuzzes the CLI's routes file (`tunl route replace --file`):
//! `tunl_cli::commands::parse_routes`, JSON or `PREFIX via NODE` lines.
//!
//! Never panics; a refusal says why. Accepted routes read back the same in
//! every form the file may take: the lines `tunl route list` prints, a JSON
//! array, and the JSON object of `tunl route list --json`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunl::control::RouteList;
use tunl_cli::commands::{format_routes, parse_routes};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let routes = match parse_routes(text) {
        Ok(r) => r,
        Err(message) => {
            assert!(!message.is_empty(), "a refusal without a reason");
            return;
        }
    };
    let list = RouteList { routes };
    let lines = format_routes(&list);
    assert_eq!(
        parse_routes(&lines).as_ref(),
        Ok(&list.routes),
        "as lines:\n{lines}"
    );
    let array = serde_json::to_string(&list.routes).expect("routes serialise");
    assert_eq!(
        parse_routes(&array).as_ref(),
        Ok(&list.routes),
        "as a JSON array"
    );
    let object = serde_json::to_string_pretty(&list).expect("a route list serialises");
    assert_eq!(
        parse_routes(&object).as_ref(),
        Ok(&list.routes),
        "as a JSON object"
    );
});
