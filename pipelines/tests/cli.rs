//! The binary refuses bad pipeline files with the file, the line and what is wrong.

use std::process::Command;

fn validate(yaml: &str, name: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("touchpoint-cli-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_touchpoint")).args(["validate", "--config"]).arg(&path).output().unwrap();
    std::fs::remove_file(&path).ok();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

const LOCAL: &str = include_str!("../config/local.yaml");

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle") + 1
}

#[test]
fn the_shipped_file_validates() {
    let (ok, out) = validate(LOCAL, "ok");
    assert!(ok, "{out}");
}

#[test]
fn an_unknown_key_is_refused_with_file_and_line() {
    let bad = LOCAL.replacen("  drain_idle: 1500ms", "  drain_idle: 1500ms\n  drain_idel: 2s", 1);
    let (ok, out) = validate(&bad, "unknown");
    assert!(!ok);
    let line = line_of(&bad, "drain_idel");
    assert!(out.contains(&format!("-unknown.yaml:{line}:")), "{out}");
    assert!(out.contains("unknown field `drain_idel`"), "{out}");
}

#[test]
fn a_wrong_type_is_refused_with_file_and_line() {
    let bad = LOCAL.replacen("max_subject_id_len: 256", "max_subject_id_len: lots", 1);
    let (ok, out) = validate(&bad, "type");
    assert!(!ok);
    let line = line_of(&bad, "max_subject_id_len: lots");
    assert!(out.contains(&format!("-type.yaml:{line}:")), "{out}");
    assert!(out.contains("invalid type"), "{out}");
}
