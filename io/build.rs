//! Compiles the XDP program (`bpf/tunl_xdp.bpf.c`) with clang into
//! `OUT_DIR/tunl_xdp.bpf.o`, which `src/xdp/program.rs` embeds.
//!
//! Needs clang with the BPF target and the headers of libbpf-dev
//! (`bpf/bpf_helpers.h`) and linux-libc-dev (`linux/bpf.h`): Debian's
//! `clang libbpf-dev`, installed by `scripts/setup.sh`. `TUNL_CLANG` names
//! another clang binary. When clang is missing or fails, the build stops
//! with `cargo::error` lines that say so.

use std::env;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/tunl_xdp.bpf.c";
/// The UMEM chunk size: the program's length check and the Rust side
/// (`TUNL_XSK_FRAME`, read by `src/xdp/mod.rs`) take it from here.
const XSK_FRAME: u32 = 2048;

/// Fails the build with `msg`: each `cargo::error` line is printed as an
/// error and the build stops once the script exits (with status 0, so cargo
/// prints the lines instead of the script's raw output).
fn fail(msg: &str) -> ! {
    for line in msg.lines() {
        println!("cargo::error={line}");
    }
    std::process::exit(0);
}

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TUNL_CLANG");
    println!("cargo::rustc-env=TUNL_XSK_FRAME={XSK_FRAME}");

    let clang = env::var("TUNL_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let Some(out_dir) = env::var_os("OUT_DIR") else {
        fail("OUT_DIR is not set: run this build script through cargo");
    };
    let out = PathBuf::from(out_dir).join("tunl_xdp.bpf.o");
    // linux/types.h includes <asm/types.h>, which Debian keeps under the
    // multiarch directory; `-target bpf` does not search it by itself.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok("riscv64") => "riscv64-linux-gnu",
        Ok(other) => fail(&format!(
            "no multiarch include directory known for {other}: add it to io/build.rs"
        )),
        Err(_) => fail("CARGO_CFG_TARGET_ARCH is not set"),
    };
    let include = format!("-I/usr/include/{multiarch}");
    let frame = format!("-DTUNL_XSK_FRAME={XSK_FRAME}");
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .args([&include, &frame, "-c", SOURCE, "-o"])
        .arg(&out)
        .output();
    match result {
        Ok(o) if o.status.success() => {}
        Ok(o) => fail(&format!(
            "{clang} failed to compile {SOURCE} ({}):\n{}\n\
             The XDP program needs clang, libbpf-dev (bpf/bpf_helpers.h) and \
             linux-libc-dev: run scripts/setup.sh",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim_end()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found: tunl's XDP program ({SOURCE}) is compiled from source with clang.\n\
             Install it with scripts/setup.sh (apt-get install clang libbpf-dev), \
             or point TUNL_CLANG at a clang binary."
        )),
        Err(e) => fail(&format!("cannot run `{clang}`: {e}")),
    }
}
