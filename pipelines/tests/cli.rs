//! The binary refuses bad pipeline files with the file, the line and what is wrong.

use std::path::Path;
use std::process::Command;

fn validate_path(path: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_touchpoint")).args(["validate", "--config"]).arg(path).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Validates `yaml` written to a temporary file; its journeys directory points at the shipped one.
fn validate(yaml: &str, name: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("touchpoint-cli-{}-{name}.yaml", std::process::id()));
    let journeys = Path::new(env!("CARGO_MANIFEST_DIR")).join("journeys");
    let segments = journeys.with_file_name("segments");
    let yaml = yaml
        .replace("dir: ../journeys", &format!("dir: {}", journeys.display()))
        .replace("dir: ../segments", &format!("dir: {}", segments.display()));
    std::fs::write(&path, yaml).unwrap();
    let result = validate_path(&path);
    std::fs::remove_file(&path).ok();
    result
}

const LOCAL: &str = include_str!("../config/local.yaml");

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle") + 1
}

#[test]
fn the_shipped_file_validates() {
    let (ok, out) = validate_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.yaml"));
    assert!(ok, "{out}");
    assert!(out.contains("journey welcome-series version v1-"), "{out}");
    assert!(out.contains("journey abandoned-cart version v1-"), "{out}");
    assert!(out.contains("segment inactive-3d version v1-"), "{out}");
}

#[test]
fn a_bad_journey_file_is_refused_with_file_line_and_problem() {
    let dir = std::env::temp_dir().join(format!("touchpoint-cli-{}-journeys", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("journeys");
    let cart = std::fs::read_to_string(shipped.join("abandoned-cart.yaml")).unwrap();
    std::fs::write(dir.join("abandoned-cart.yaml"), cart.replace("on_timeout: variant", "on_timeout: varient"))
        .unwrap();
    let welcome = std::fs::read_to_string(shipped.join("welcome-series.yaml")).unwrap();
    std::fs::write(dir.join("welcome-series.yaml"), welcome.replace("wait: 1d", "wait: one day")).unwrap();
    let segments = shipped.with_file_name("segments");
    let yaml = LOCAL
        .replace("dir: ../journeys", &format!("dir: {}", dir.display()))
        .replace("dir: ../segments", &format!("dir: {}", segments.display()));
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (ok, out) = validate_path(&path);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!ok);
    let bad_cart = cart.replace("on_timeout: variant", "on_timeout: varient");
    let line = bad_cart.lines().position(|l| l.contains("varient")).unwrap() + 1;
    assert!(
        out.contains(&format!(
            "abandoned-cart.yaml:{line}: step `wait-for-order`: on_timeout refers to unknown step `varient`"
        )),
        "{out}"
    );
    assert!(
        out.contains("welcome-series.yaml:") && out.contains("`one day` is not a duration"),
        "every file's problems: {out}"
    );
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
