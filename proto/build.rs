//! Compiles `kiln/v1/*.proto` with protox (pure Rust), so building Kiln needs no system `protoc`,
//! and records the commit the build comes from (`KILN_COMMIT`) for `kiln_build_info` and
//! `kiln --version`.

use std::path::PathBuf;
use std::process::Command;

use prost::Message;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// `KILN_COMMIT` from the environment (image builds without `.git` set it), else `git`'s short
/// hash of HEAD, else `unknown`.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=KILN_COMMIT");
    if let Ok(commit) = std::env::var("KILN_COMMIT") {
        return commit;
    }
    // Rebuild when HEAD moves: its file for a branch switch, the branch's ref for a commit.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])) {
        if std::path::Path::new(&reference).exists() {
            println!("cargo:rerun-if-changed={reference}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/kiln/v1/kiln.proto"];
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set feeds gRPC server reflection (both `v1` and `v1alpha`).
    std::fs::write(out.join("kiln_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rustc-env=KILN_COMMIT={}", commit());
    Ok(())
}
