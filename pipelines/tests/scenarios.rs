//! The journey scenario suite: every file of `pipelines/scenarios` (events in, expected sends,
//! suppressions and transitions out) runs through the pipeline's subject-keyed timely operator with the
//! real consent, caps and journey logic (`touchpoint::scenario`). The real-service end-to-end runs of
//! journeys are in `journeys_e2e.rs`.

use std::path::Path;

use touchpoint::scenario::{differences, run_file, scenario_files};

#[test]
fn every_scenario_file_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = scenario_files(&root.join("scenarios")).expect("scenario files");
    assert!(files.len() >= 12, "the suite has {} scenarios", files.len());
    let mut failures = Vec::new();
    for file in &files {
        match run_file(file, &root.join("journeys")) {
            Ok((scenario, outcome)) => {
                let problems = differences(&scenario, &outcome);
                if !problems.is_empty() {
                    failures.push(format!("{} ({}):\n  {}", file.display(), scenario.name, problems.join("\n  ")));
                }
            }
            Err(e) => failures.push(format!("{}: {e:#}", file.display())),
        }
    }
    assert!(failures.is_empty(), "{} of {} scenarios failed:\n{}", failures.len(), files.len(), failures.join("\n\n"));
}
