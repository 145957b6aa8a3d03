//! Builds the plugins workspace (`plugins/`) for `wasm32-wasip2`, so the
//! behaviour tests run against components built from the sources in this
//! commit, never against committed or stale binaries. The path of the built
//! components reaches the tests as `WEIR_PLUGINS`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir.join("..");
    let plugins = root.join("plugins");
    for watched in [
        "Cargo.toml",
        "Cargo.lock",
        "sdk",
        "identity",
        "phone-normalize",
        "row-filter",
        "json-flatten",
        "dedupe",
        "hostile",
    ] {
        println!("cargo:rerun-if-changed={}", plugins.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let target_dir = plugins.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_OPT_LEVEL",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the plugins: {e}"));
    if !status.success() {
        if !target_installed() {
            panic!(
                "building the test plugins needs the wasm32-wasip2 target, which is not installed: \
                 run `rustup target add wasm32-wasip2` (rust-toolchain.toml lists it, so rustup adds it on a fresh machine)"
            );
        }
        panic!("building the plugins workspace (plugins/) for wasm32-wasip2 failed; see the errors above");
    }
    let out = target_dir.join("wasm32-wasip2").join("release");
    let out = out.canonicalize().unwrap_or(out);
    println!("cargo:rustc-env=WEIR_PLUGINS={}", out.display());
}

/// Whether the toolchain has the standard library for `wasm32-wasip2`.
fn target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .is_some_and(|sysroot| Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2").is_dir())
}
