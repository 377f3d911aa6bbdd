//! Builds the test guest (crates/testguest, its own workspace with its own
//! target flags) and hands its ELF to the binary, which embeds it as the
//! default kernel. Set NIGHTSHIFT_TESTGUEST_ELF to use a prebuilt ELF instead.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NIGHTSHIFT_TESTGUEST_ELF");
    let elf = match env::var_os("NIGHTSHIFT_TESTGUEST_ELF") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => build_testguest(),
    };
    println!("cargo:rustc-env=NIGHTSHIFT_TESTGUEST_ELF={}", elf.display());
}

fn build_testguest() -> PathBuf {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let guest_dir = manifest_dir.join("../testguest");
    for input in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "linker.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(input).display());
    }
    // The guest's own target directory, shared by every profile of this crate (clippy's
    // and the tests' build scripts alike) and by cargo run inside crates/testguest: the
    // guest is always the same release build, and with its driver stack (virtio-drivers,
    // smoltcp) building it once per profile would cost CI a minute.
    let target_dir = guest_dir.join("target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir);
    // The guest has its own flags in its .cargo/config.toml; flags meant for
    // the host build (and cargo's per-build settings) must not leak into it.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the test guest");
    assert!(
        status.success(),
        "building the test guest (crates/testguest) failed"
    );
    // The guest's .cargo/config.toml names its target explicitly (so that its flags stay
    // off the host-side proc macros of its dependencies), hence the triple in the path.
    target_dir.join("x86_64-unknown-linux-gnu/release/nightshift-testguest")
}
