//! Parsing and validating an untrusted `connector.toml` (as a published
//! connector or a pushed dev package brings it). Errors are expected; a
//! panic is a bug, and so is a connector that validates but cannot be
//! written back and read again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_engine::connector::Connector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(connector) = Connector::from_toml(text) else {
        return;
    };
    if !connector.validate().is_empty() {
        return;
    }
    let _ = connector.limits.parse();
    let written = connector.to_toml().expect("a valid connector serializes");
    let again = Connector::from_toml(&written).expect("a written connector parses again");
    assert!(
        again.validate().is_empty(),
        "a written connector validates again:\n{written}"
    );
});
