//! Link the guest binary as a freestanding static ELF at 1 MiB.
//!
//! The target flags live in `.cargo/config.toml`; the link arguments live here so that a
//! plain `cargo build --release` (with or without `--target-dir`) produces the guest image.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"));
    let script = dir.join("linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");

    // Cargo hands build scripts the effective rustflags. Environment RUSTFLAGS replace the
    // ones in .cargo/config.toml, and without a static relocation model the image would be
    // a PIE that nothing relocates.
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !rustflags
        .split('\x1f')
        .any(|f| f.contains("relocation-model=static"))
    {
        panic!(
            "nightshift-testguest must be built with -C relocation-model=static \
             (from crates/testguest/.cargo/config.toml); unset RUSTFLAGS and \
             CARGO_ENCODED_RUSTFLAGS and run cargo from inside crates/testguest"
        );
    }

    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=0x1000",
        "-Wl,-z,noexecstack",
        "-Wl,--no-dynamic-linker",
        "-Wl,-z,norelro",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
