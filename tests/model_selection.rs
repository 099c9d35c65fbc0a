//! End-to-end runs of the model-selection commands on the generated example: `tune`,
//! `compare`, and `importance --by-fold`.
use std::path::{Path, PathBuf};

mod common;
use common::{ensemble, read_json, run_ok, temp_dir};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small generated example: 600 training battles.
fn example(dir: &Path) -> PathBuf {
    run_ok(&[
        "example",
        "--out",
        path(dir),
        "--rows",
        "600",
        "--test-rows",
        "20",
    ]);
    dir.join("train.csv")
}

#[test]
fn tune_is_reproducible_and_writes_a_config_cv_reads() {
    let dir = temp_dir("tune");
    let train = example(&dir.join("data"));
    let tune = |out: &Path| {
        run_ok(&[
            "tune",
            "--train",
            path(&train),
            "--trials",
            "3",
            "--folds",
            "4",
            "--seed",
            "5",
            "--out",
            path(out),
        ])
    };
    let (first, second) = (dir.join("first"), dir.join("second"));
    tune(&first);
    tune(&second);
    let trials = std::fs::read_to_string(first.join("trials.csv")).unwrap();
    assert_eq!(
        trials,
        std::fs::read_to_string(second.join("trials.csv")).unwrap()
    );
    assert_eq!(trials.lines().count(), 4, "header and 3 trials:\n{trials}");
    // Each outer fold's inner ranking chose one trial: the folds listed cover 0..3 once.
    let mut chosen: Vec<u32> = trials
        .lines()
        .skip(1)
        .flat_map(|line| line.rsplit(',').next().unwrap().split_whitespace())
        .map(|fold| fold.parse().unwrap())
        .collect();
    chosen.sort_unstable();
    assert_eq!(chosen, [0, 1, 2, 3]);

    let summary: serde_json::Value = read_json(&first.join("tune.json"));
    let best_cv = summary["best_cv_log_loss"].as_f64().unwrap();
    // tune.json's best trial is the one with the lowest CV log loss in trials.csv, and the
    // base is trial 0.
    let cv_losses: Vec<f64> = trials
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(8).unwrap().parse().unwrap())
        .collect();
    let lowest = (0..cv_losses.len())
        .min_by(|&a, &b| cv_losses[a].total_cmp(&cv_losses[b]))
        .unwrap();
    assert_eq!(summary["best_trial"].as_u64().unwrap() as usize, lowest);
    assert_eq!(best_cv, cv_losses[lowest]);
    assert_eq!(summary["base_cv_log_loss"].as_f64().unwrap(), cv_losses[0]);
    assert!(summary["nested_log_loss"].as_f64().unwrap().is_finite());

    // best.toml is a config `cv` reads; with the search's folds, cv reproduces the best
    // trial's CV log loss exactly.
    let best = first.join("best.toml");
    let run = dir.join("run");
    run_ok(&[
        "cv",
        "--config",
        path(&best),
        "--folds-file",
        path(&first.join("folds.csv")),
        "--train",
        path(&train),
        "--out",
        path(&run),
    ]);
    let metrics: serde_json::Value = read_json(&run.join("metrics.json"));
    assert_eq!(metrics["oof_log_loss"].as_f64().unwrap(), best_cv);
    // best.toml keeps the config's own fold count for `cv`, not the search's 4.
    assert!(std::fs::read_to_string(&best)
        .unwrap()
        .contains("folds = 10"));
}

#[test]
fn tune_refuses_held_out_stopping_naming_the_config() {
    let dir = temp_dir("tune-peeking");
    let train = example(&dir);
    let config = dir.join("peeking.toml");
    std::fs::write(&config, "[lgbm]\nearly_stopping_on = \"held-out\"\n").unwrap();
    let output = ensemble(&[
        "tune",
        "--train",
        path(&train),
        "--config",
        path(&config),
        "--trials",
        "2",
        "--folds",
        "4",
        "--out",
        path(&dir.join("out")),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("peeking.toml") && stderr.contains("early_stopping_on"),
        "{stderr}"
    );
    assert!(!dir.join("out").exists());
}

#[test]
fn tune_refuses_too_few_folds_for_inner_early_stopping() {
    let dir = temp_dir("tune-folds");
    let train = example(&dir);
    let output = ensemble(&[
        "tune",
        "--train",
        path(&train),
        "--trials",
        "2",
        "--folds",
        "3",
        "--out",
        path(&dir.join("out")),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("at least 4 folds"),
        "{stderr}"
    );
}

#[test]
fn compare_pairs_fold_losses_and_importance_shows_each_fold() {
    let dir = temp_dir("compare");
    let train = example(&dir.join("data"));
    let base = dir.join("base");
    run_ok(&[
        "cv",
        "--folds",
        "4",
        "--train",
        path(&train),
        "--out",
        path(&base),
    ]);
    let folds = base.join("folds.csv");
    let same = dir.join("same");
    let worse = dir.join("worse");
    run_ok(&[
        "cv",
        "--folds-file",
        path(&folds),
        "--train",
        path(&train),
        "--out",
        path(&same),
    ]);
    // Two leaves and a tiny learning rate: clearly worse on every fold.
    run_ok(&[
        "cv",
        "--folds-file",
        path(&folds),
        "--train",
        path(&train),
        "--num-leaves",
        "2",
        "--learning-rate",
        "0.005",
        "--max-rounds",
        "20",
        "--out",
        path(&worse),
    ]);
    let output = run_ok(&["compare", path(&base), path(&same), path(&worse)]);
    let table = String::from_utf8(output.stdout).unwrap();
    let row = |run: &Path| {
        table
            .lines()
            .find(|line| line.starts_with(path(run)))
            .unwrap_or_else(|| panic!("no row for {}:\n{table}", run.display()))
            .to_owned()
    };
    // The same model on the same folds: no difference at all.
    assert!(
        row(&same).contains("+0.0000") && row(&same).contains("0 of 4"),
        "{table}"
    );
    assert!(row(&same).contains("within 1 std. error"), "{table}");
    assert!(
        row(&worse).contains("worse") && row(&worse).contains("0 of 4"),
        "{table}"
    );
    // Four folds, models trained on two (inner-fold stopping): the corrected standard error
    // is the naive sd/√4 times √(1 + 4 · n_test/n_train) ≈ √3.
    let cells: Vec<f64> = row(&worse)
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(|cell| cell.parse().unwrap())
        .collect();
    let (corrected, naive) = (cells[4], cells[6]);
    assert!(
        (corrected / naive - 3f64.sqrt()).abs() < 0.03,
        "corrected {corrected}, naive {naive}:\n{table}"
    );

    // Runs on other folds are refused.
    let other = dir.join("other");
    run_ok(&[
        "cv",
        "--folds",
        "4",
        "--seed",
        "9",
        "--train",
        path(&train),
        "--out",
        path(&other),
    ]);
    let output = ensemble(&["compare", path(&base), path(&other)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("--folds-file"),
        "{stderr}"
    );

    // Per-fold importance: one row per feature and fold, four fold columns in the table.
    let by_fold = std::fs::read_to_string(base.join("importance_by_fold.csv")).unwrap();
    let features = std::fs::read_to_string(base.join("importance.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert_eq!(by_fold.lines().count() - 1, 4 * features);
    let output = run_ok(&[
        "importance",
        "--run",
        path(&base),
        "--by-fold",
        "--features",
        "diff_*",
        "--top",
        "3",
    ]);
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(
        lines[0].contains("fold 3") && lines[0].contains("folds used"),
        "{table}"
    );
    assert!(lines[2..]
        .iter()
        .all(|l| l.split_whitespace().nth(1).unwrap().starts_with("diff_")));
}
