//! Benchmarks of Touchpoint: criterion micro-benchmarks (`benches/operators.rs`) and the end-to-end
//! harness (`src/bin/e2e.rs`). Results and the commands that produced them: `benches/README.md`.
