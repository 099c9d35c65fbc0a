//! Helpers shared by the binary's end-to-end tests.
use std::path::{Path, PathBuf};

/// `../shared/arena-sample/NAME`: the real Kaggle sample rows beside the checkout.
pub fn arena_sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/arena-sample")
        .join(name)
}

/// Whether `../shared/arena-sample` is there. A user's fresh clone has none: a test that needs
/// it then says so and passes. CI has it, so there a missing folder fails.
pub fn arena_sample_present() -> bool {
    if arena_sample("train.csv").is_file() {
        return true;
    }
    let missing = "the Kaggle sample rows in ../shared/arena-sample next to the checkout";
    assert!(std::env::var_os("CI").is_none(), "CI needs {missing}");
    eprintln!("skipped: needs {missing}");
    false
}
