//! Fuzzes the CLI's routes file (`tunl route replace --file`):
//! `tunl_cli::commands::parse_routes`, JSON or `PREFIX via NODE` lines.
//!
//! Never panics; a refusal says why. Accepted routes read back the same in
//! every form the file may take: the lines `tunl route list` prints, a JSON
//! array, and the JSON object of `tunl route list --json`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunl::control::{ListedRoute, RouteList};
use tunl_cli::commands::{format_route_list, parse_routes};

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
    // As `tunl route list` would show them once installed: tunl's own,
    // one gateway each.
    let list = RouteList {
        routes: routes
            .iter()
            .map(|r| ListedRoute {
                prefix: r.prefix,
                via: Some(r.via),
                nexthops: Vec::new(),
                origin: "tunl".into(),
                metric: 0,
            })
            .collect(),
    };
    let lines = format_route_list(&list);
    assert_eq!(
        parse_routes(&lines).as_ref(),
        Ok(&routes),
        "as lines:\n{lines}"
    );
    let array = serde_json::to_string(&routes).expect("routes serialise");
    assert_eq!(
        parse_routes(&array).as_ref(),
        Ok(&routes),
        "as a JSON array"
    );
    let object = serde_json::to_string_pretty(&list).expect("a route list serialises");
    assert_eq!(
        parse_routes(&object).as_ref(),
        Ok(&routes),
        "as a JSON object"
    );
});
