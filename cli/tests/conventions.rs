//! The conventions people expect of a CLI: shell completions, man pages, a version that names its
//! commit, JSON errors with `-o json`, `KILN_CONFIG`, and a demo that leaves the current directory
//! alone.

use std::path::PathBuf;
use std::process::Command;

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("KILN_CONFIG").env_remove("NO_COLOR");
    c
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef kiln"), ("fish", "complete -c kiln")] {
        let out = kiln().args(["completion", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell} completion lacks {marker:?}");
        assert!(script.contains("status") && script.contains("dlq"), "{shell} completion knows the commands");
    }
    let bad = kiln().args(["completion", "cmd.exe"]).output().expect("run");
    assert!(!bad.status.success());
}

#[test]
fn man_pages_are_written_for_kiln_and_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = kiln().args(["man", "--out"]).arg(dir.path()).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("kiln.1")).expect("kiln.1");
    assert!(page.contains(".TH kiln 1") || page.contains(".TH KILN 1") || page.contains(".TH"), "{page}");
    assert!(page.contains("status"), "the main page lists the commands");
    for cmd in ["status", "submit", "dlq", "completion"] {
        assert!(dir.path().join(format!("kiln-{cmd}.1")).is_file(), "no page for {cmd}");
    }
}

#[test]
fn version_names_the_commit_and_the_renderers() {
    let out = kiln().arg("--version").output().expect("run");
    assert!(out.status.success());
    let v = text(&out.stdout);
    assert!(v.starts_with(&format!("kiln {} (commit ", env!("CARGO_PKG_VERSION"))), "{v}");
    assert!(v.contains("renderers: ") && v.contains("loudness"), "{v}");
}

#[test]
fn errors_are_json_with_output_json() {
    let out =
        kiln().args(["-o", "json", "--scheduler", "http://127.0.0.1:9", "task", "not-a-number"]).output().expect("run");
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("stderr is one JSON object");
    assert!(err["error"].as_str().is_some_and(|e| e.contains("not-a-number")), "{err}");
    let plain = kiln().args(["--scheduler", "http://127.0.0.1:9", "task", "x"]).output().expect("run");
    assert!(text(&plain.stderr).starts_with("error: "));
}

#[test]
fn kiln_config_names_the_file_to_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("broken.toml");
    std::fs::write(&config, "[scheduler]\nnode_id = \"not a number\"\n").expect("write");
    let out = kiln().env("KILN_CONFIG", &config).env("HOME", dir.path()).arg("scheduler").output().expect("run");
    assert!(!out.status.success(), "a broken file named by KILN_CONFIG is read and refused");
    assert!(text(&out.stderr).contains("broken.toml"), "{}", text(&out.stderr));
}

#[test]
fn analyze_follows_output_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("tone.wav");
    kiln_testkit::write_sine_wav(&wav, 8_000, 2.0, 440.0, 0.5).expect("wav");
    let out = kiln().args(["-o", "json", "analyze"]).arg(&wav).output().expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    assert_eq!(rows[0]["file"].as_str().map(PathBuf::from), Some(wav));
}

#[test]
fn demo_writes_under_the_temp_dir_not_the_current_one() {
    let cwd = tempfile::tempdir().expect("cwd");
    let tmp = tempfile::tempdir().expect("tmp");
    let out = kiln()
        .current_dir(cwd.path())
        .env("TMPDIR", tmp.path())
        .args(["-o", "json", "demo", "--seconds", "4", "--slots", "2"])
        .output()
        .expect("run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(std::fs::read_dir(cwd.path()).expect("cwd").count(), 0, "the demo left files in the current directory");
    assert!(tmp.path().join("kiln-demo").join("masters").is_dir(), "{}", text(&out.stderr));
    assert_eq!(report["out"].as_str().map(PathBuf::from), Some(tmp.path().join("kiln-demo")), "{report}");
}
