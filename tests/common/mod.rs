//! Helpers shared by the binary's end-to-end tests.
//! Each test crate uses a part of these helpers.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the binary. Tests run side by side on few cores: `cv` and `tune` get one thread, and OpenMP
/// (inside LightGBM) sleeps instead of spinning while it waits, or oversubscribed cores make
/// each boosting round many times slower. A scheduler's array index (which picks the fold of
/// `transformer` without `--fold`) is not passed on, so the tests pass inside a Slurm array
/// task or a Kubernetes Indexed Job; the test of that choice sets it on its own command.
pub fn ensemble(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ensemble"));
    command
        .args(args)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    if matches!(args.first(), Some(&"cv" | &"tune")) {
        command.args(["--threads", "1"]);
    }
    command.output().expect("the binary runs")
}

/// An empty folder in the system's temporary directory, named for the test and the process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ensemble-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A JSON file the binary wrote (metrics.json, tune.json, blend.json, ...).
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the binary and fails the test with its stderr unless it succeeds.
pub fn run_ok(args: &[&str]) -> Output {
    let output = ensemble(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

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

/// Every file under `dir` (relative path) with its bytes: a folder's state, to compare.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

/// A train.csv of `battles` battles over `prompts` prompts (battle i asks prompt i % prompts;
/// the last prompt has two turns), labels cycling A, B, tie, for tests of grouped folds.
pub fn battles_over_prompts(battles: usize, prompts: usize) -> String {
    let prompt = |i: usize| match i % prompts {
        k if k == prompts - 1 => format!(r#"["question {k}", "and a follow-up"]"#),
        k => format!(r#"["question {k}"]"#),
    };
    let mut train = String::from(
        "id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n",
    );
    for i in 0..battles {
        let label = ["1,0,0", "0,1,0", "0,0,1"][i % 3];
        let answer = "x ".repeat(i % 5 + 1);
        train.push_str(&format!(
            "{},m1,m2,\"{}\",\"[\"\"{answer}\"\"]\",\"[\"\"y\"\"]\",{label}\n",
            100 + i,
            prompt(i).replace('"', "\"\"")
        ));
    }
    train
}
