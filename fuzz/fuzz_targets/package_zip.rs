//! Unpacking and loading an untrusted dev package zip: path traversal,
//! links, entry counts and unpacked size are refused with an error. A panic,
//! or a file written outside the unpack directory, is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_engine::package::{Package, unpack_limited};

const MAX_UNPACKED: u64 = 4 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("a temp dir");
    let zip = root.path().join("package.zip");
    std::fs::write(&zip, data).expect("writing the case");
    let inside = root.path().join("inside");
    std::fs::create_dir(&inside).expect("a directory to unpack into");
    let _ = unpack_limited(&zip, &inside, MAX_UNPACKED);
    // Nothing may land beside the unpack directory.
    let mut beside: Vec<_> = std::fs::read_dir(root.path())
        .expect("listing the temp dir")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["inside", "package.zip"],
        "an entry escaped the unpack directory"
    );
    let _ = Package::load_limited(&zip, MAX_UNPACKED);
});
