#![cfg(feature = "transformer")]
//! `ensemble transformer` end to end on the real Kaggle sample rows in ../shared/arena-sample
//! with the tiny fixture model: a folds file, per-fold runs, the merge, and the outputs'
//! shape.
use std::path::Path;

mod common;
use common::{ensemble, read_json, run_ok};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The arena sample's train.csv and test.csv and the tiny fixture model, as arguments.
fn sample_and_model() -> [String; 3] {
    [
        common::arena_sample("train.csv"),
        common::arena_sample("test.csv"),
        root().join("tests/fixtures/tiny-deberta"),
    ]
    .map(|p| p.to_str().unwrap().to_owned())
}

/// A temporary folder holding copies of `names` from the model folder `source`.
fn copy_of(source: &Path, names: &[&str]) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for name in names {
        std::fs::copy(source.join(name), copy.path().join(name)).unwrap();
    }
    copy
}

fn rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

#[test]
fn transformer_runs_folds_and_merges_on_the_arena_sample() {
    if !common::arena_sample_present() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let [train, test, model] = sample_and_model();
    let (train, test, model) = (train.as_str(), test.as_str(), model.as_str());
    let data = [
        "--train",
        train,
        "--test",
        test,
        "--out",
        out_dir,
        "--max-len",
        "128",
    ];
    let common = [
        ["transformer", "--model", model].as_slice(),
        &data,
        &["--epochs", "1"],
    ]
    .concat();
    // All folds in one run (makes folds.csv), then fold 1 again alone from that file (in
    // bf16, keeping its model), then the merge step on its own.
    let mut all = common.to_vec();
    all.extend(["--folds", "3"]);
    run_ok(&all);
    let folds_file = out.path().join("folds.csv");
    assert!(folds_file.is_file());
    let folds_path = folds_file.to_str().unwrap();
    let mut one = common.to_vec();
    one.extend([
        "--folds-file",
        folds_path,
        "--fold",
        "1",
        "--precision",
        "bf16",
        "--save-models",
    ]);
    run_ok(&one);
    // The saved fold model predicts the test file again, without training and without
    // --model, bit for bit as when it was trained.
    let test_logits = out.path().join("fold-1/test_logits.csv");
    let trained_logits = std::fs::read_to_string(&test_logits).unwrap();
    std::fs::remove_file(&test_logits).unwrap();
    let predict = [
        ["transformer"].as_slice(),
        &data,
        &["--precision", "bf16", "--predict-only", "--fold", "1"],
    ]
    .concat();
    run_ok(&predict);
    assert_eq!(
        std::fs::read_to_string(&test_logits).unwrap(),
        trained_logits
    );
    // Predicting in another precision than training (f32 for a bf16 fold, as on a GPU without
    // bf16) works, says so, and moves the logits slightly.
    let other_precision = [
        ["transformer"].as_slice(),
        &data,
        &["--precision", "f32", "--predict-only", "--fold", "1"],
    ]
    .concat();
    let output = run_ok(&other_precision);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("trained in \"bf16\", predicting in \"f32\""),
        "{stderr}"
    );
    let values = |text: &str| -> Vec<f32> {
        text.lines()
            .skip(1)
            .flat_map(|l| l.split(',').skip(1).map(|v| v.parse::<f32>().unwrap()))
            .collect()
    };
    let moved = values(&trained_logits)
        .iter()
        .zip(values(&std::fs::read_to_string(&test_logits).unwrap()))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved < 0.1,
        "f32 prediction of a bf16 fold moved by {moved}"
    );
    // A key that changes what the model reads is refused, naming it.
    let mut mismatch = predict.clone();
    let max_len = mismatch.iter().position(|a| *a == "128").unwrap();
    mismatch[max_len] = "64";
    let output = ensemble(&mismatch);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("fold.json: the model was trained with max_len = 128"),
        "{stderr}"
    );
    // Fold 0 kept no model, so it cannot predict.
    let mut predict_zero = predict.to_vec();
    *predict_zero.last_mut().unwrap() = "0";
    let output = ensemble(&predict_zero);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no saved model for fold 0"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Fold 1 is now a bf16 fold among f32 ones: the merge refuses to mix them, naming the
    // fold and the key.
    let mut merge = common.to_vec();
    merge.push("--merge");
    let output = ensemble(&merge);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("fold 1 was trained with precision = \"bf16\" (this run: \"f32\")"),
        "{stderr}"
    );
    // Trained again in f32 (keeping its model), fold 1 merges; the merge finds the run's
    // folds.csv itself.
    let mut one_f32 = one.clone();
    one_f32.retain(|a| *a != "bf16" && *a != "--precision");
    run_ok(&one_f32);
    run_ok(&merge);

    let header = ["id", "winner_model_a", "winner_model_b", "winner_tie"];
    for (file, expected_rows) in [("submission.csv", 3), ("oof.csv", 100)] {
        let table = rows(&out.path().join(file));
        assert_eq!(table[0], header, "{file}");
        assert_eq!(table.len() - 1, expected_rows, "{file}");
        let mut ids: Vec<&String> = table[1..].iter().map(|r| &r[0]).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), expected_rows, "{file}: every id once");
        for row in &table[1..] {
            let p: Vec<f64> = row[1..].iter().map(|v| v.parse().unwrap()).collect();
            assert!(
                p.iter().all(|&v| (0.0..=1.0).contains(&v)),
                "{file}: {row:?}"
            );
            assert!(
                (p.iter().sum::<f64>() - 1.0).abs() < 1e-4,
                "{file}: {row:?}"
            );
        }
    }
    // Submission rows follow test.csv's order.
    let test_ids: Vec<String> = rows(Path::new(test))[1..]
        .iter()
        .map(|r| r[0].clone())
        .collect();
    let submission: Vec<String> = rows(&out.path().join("submission.csv"))[1..]
        .iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(submission, test_ids);
    for file in [
        "oof_logits.csv",
        "test_logits.csv",
        "metrics.json",
        "fold-2/fold.json",
        "fold-1/model/model.safetensors",
        "fold-1/model/config.json",
        "fold-1/model/spm.model",
    ] {
        assert!(out.path().join(file).is_file(), "{file}");
    }
    assert!(
        !out.path().join("fold-0/model").exists(),
        "saved without --save-models"
    );
    let metrics: serde_json::Value = read_json(&out.path().join("metrics.json"));
    assert_eq!(metrics["folds"].as_array().unwrap().len(), 3);
    assert!(metrics["oof_log_loss"].as_f64().unwrap().is_finite());
    // Each fold's checkpoint was picked on the next fold, never on the fold it predicts.
    for (k, fold) in metrics["folds"].as_array().unwrap().iter().enumerate() {
        assert_eq!(fold["stopping_fold"], (k + 1) % 3, "fold {k}");
    }

    // A NaN logit in a fold file stops the merge, naming the file, line and id.
    let fold_logits = out.path().join("fold-2/test_logits.csv");
    let text = std::fs::read_to_string(&fold_logits).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let id = lines[1].split(',').next().unwrap().to_owned();
    lines[1] = format!("{id},NaN,0.5,0.1");
    std::fs::write(&fold_logits, lines.join("\n")).unwrap();
    let output = ensemble(&merge);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("fold-2/test_logits.csv, line 2") && stderr.contains(&id),
        "{stderr}"
    );
}

/// The probabilities of a predictions file (id,p_a,p_b,p_tie), by id.
fn probabilities(path: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    rows(path)[1..]
        .iter()
        .map(|r| {
            (
                r[0].clone(),
                r[1..].iter().map(|v| v.parse().unwrap()).collect(),
            )
        })
        .collect()
}

/// Folds trained as a scheduler's array tasks would train them (separate processes, started
/// together, each told its fold only by SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX), then
/// merged, give the run that one process makes.
#[test]
fn folds_from_a_scheduler_array_merge_into_the_one_process_run() {
    if !common::arena_sample_present() {
        return;
    }
    let [train, test, model] = sample_and_model();
    let (one_process, array) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |out: &Path| -> Vec<String> {
        [
            "transformer",
            "--model",
            &model,
            "--train",
            &train,
            "--test",
            &test,
            "--out",
            out.to_str().unwrap(),
            "--max-len",
            "96",
            "--epochs",
            "1",
            "--folds",
            "3",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    run_ok(
        &args(one_process.path())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );

    let task = |variable: &str, index: usize| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ensemble"))
            .args(args(array.path()))
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .env(variable, index.to_string())
            .output()
            .expect("the binary runs")
    };
    let (second, first) = std::thread::scope(|scope| {
        let second = scope.spawn(|| task("SLURM_ARRAY_TASK_ID", 2));
        let first = scope.spawn(|| task("JOB_COMPLETION_INDEX", 0));
        (second.join().unwrap(), first.join().unwrap())
    });
    for output in [&second, &first] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // A task trains its fold only: no merge yet.
        assert!(String::from_utf8_lossy(&output.stderr).contains("from "));
    }
    assert!(!array.path().join("oof.csv").exists());
    // The merge step is given no training settings: it takes those the folds recorded.
    let mut merge = args(array.path());
    merge.retain(|a| !["--max-len", "96", "--epochs", "1"].contains(&a.as_str()));
    merge.push("--merge".into());
    let merge: Vec<&str> = merge.iter().map(String::as_str).collect();
    let output = ensemble(&merge);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("fold 1 not trained yet"),
        "{stderr}"
    );
    let last = task("SLURM_ARRAY_TASK_ID", 1);
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    run_ok(&merge);

    let metrics = read_json(&array.path().join("metrics.json"));
    assert_eq!(metrics["config"]["max_len"], 96);
    for file in ["oof.csv", "submission.csv"] {
        let (expected, merged) = (
            probabilities(&one_process.path().join(file)),
            probabilities(&array.path().join(file)),
        );
        assert_eq!(expected.len(), merged.len(), "{file}");
        for (id, p) in &expected {
            let q = &merged[id];
            for c in 0..3 {
                assert!(
                    (p[c] - q[c]).abs() <= 1e-6,
                    "{file} id {id}: {p:?} vs {q:?}"
                );
            }
        }
    }
    // The array index is out of range: named with its variable.
    let output = task("SLURM_ARRAY_TASK_ID", 3);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("SLURM_ARRAY_TASK_ID=3: the run has folds 0..2"),
        "{stderr}"
    );
}

/// Model folders the members cannot read are named with what is wrong: an empty folder lacks
/// config.json; a decoder LLM's folder (which goes to the LLM member) without its tokenizer.
#[test]
fn transformer_names_what_is_wrong_with_a_model_folder() {
    if !common::arena_sample_present() {
        return;
    }
    let [train, test, _] = sample_and_model();
    let empty = tempfile::tempdir().unwrap();
    let qwen = copy_of(
        &root().join("tests/fixtures/tiny-llm-qwen2"),
        &["config.json", "model.safetensors"],
    );
    // A model type neither member reads, given with the LLM member's config: named as the
    // folder's, not as a config file the wrong member could not parse.
    let gemma3 = tempfile::tempdir().unwrap();
    std::fs::write(
        gemma3.path().join("config.json"),
        r#"{"model_type": "gemma3"}"#,
    )
    .unwrap();
    let llm_config = root().join("configs/llm.toml");
    let qwen_fixture = root().join("tests/fixtures/tiny-llm-qwen2");
    for (model, flags, expected) in [
        (
            empty.path(),
            &[][..],
            "config.json: missing the model configuration",
        ),
        (qwen.path(), &[], "missing tokenizer.json"),
        (
            gemma3.path(),
            &["--config", llm_config.to_str().unwrap()],
            "config.json: model_type \"gemma3\" is not one `transformer` trains",
        ),
        (
            qwen_fixture.as_path(),
            &["--max-len", "50"],
            "max_len 50 (set by --max-len) leaves a field of the battle no token",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![
            "transformer",
            "--model",
            model.to_str().unwrap(),
            "--train",
            &train,
            "--test",
            &test,
            "--out",
            out.path().to_str().unwrap(),
            "--folds",
            "2",
        ];
        args.extend(flags);
        let output = ensemble(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{stderr}"
        );
    }
}

/// `--group-by prompt` keeps each prompt's battles in one fold, as `cv`'s does; plain folds
/// spread them and the run says so.
#[test]
fn transformer_groups_folds_by_prompt() {
    if !common::arena_sample_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 24 battles over 6 prompts, 4 each; prompt 5 has two turns.
    let train = common::battles_over_prompts(24, 6);
    let train_path = dir.path().join("train.csv");
    std::fs::write(&train_path, train).unwrap();
    let [_, test, model] = sample_and_model();
    let run = |group_by: &str| {
        let out = dir.path().join(format!("run-{group_by}"));
        let output = run_ok(&[
            "transformer",
            "--model",
            &model,
            "--train",
            train_path.to_str().unwrap(),
            "--test",
            &test,
            "--out",
            out.to_str().unwrap(),
            "--folds",
            "3",
            "--group-by",
            group_by,
            "--epochs",
            "1",
            "--max-len",
            "32",
        ]);
        let folds: Vec<usize> = rows(&out.join("folds.csv"))
            .iter()
            .skip(1)
            .map(|row| row[1].parse().unwrap())
            .collect();
        (String::from_utf8_lossy(&output.stderr).into_owned(), folds)
    };
    let (stderr, _) = run("none");
    assert!(
        stderr.contains("prompts (") && stderr.contains("appear in more than one fold"),
        "{stderr}"
    );
    let (stderr, folds) = run("prompt");
    assert!(!stderr.contains("more than one fold"), "{stderr}");
    assert_eq!(folds.len(), 24);
    for i in 0..24 {
        assert_eq!(folds[i], folds[i % 6], "battle {i} left its prompt's fold");
    }
    let mut used = folds.clone();
    used.sort();
    used.dedup();
    assert_eq!(used, [0, 1, 2]);
}

/// Folds trained from different model folders (here one whose config.json differs by a byte)
/// are refused by the merge, naming both folders and their fingerprints.
#[test]
fn the_merge_refuses_folds_of_different_bases() {
    if !common::arena_sample_present() {
        return;
    }
    let [train, test, model] = sample_and_model();
    let other = copy_of(
        Path::new(&model),
        &["config.json", "model.safetensors", "spm.model"],
    );
    let config = other.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text + "\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let fold = |model: &str, fold: &str| {
        run_ok(&[
            "transformer",
            "--model",
            model,
            "--train",
            &train,
            "--test",
            &test,
            "--out",
            out_dir,
            "--folds",
            "3",
            "--max-len",
            "64",
            "--epochs",
            "1",
            "--fold",
            fold,
        ])
    };
    fold(&model, "0");
    fold(other.path().to_str().unwrap(), "1");
    fold(&model, "2");
    let output = ensemble(&[
        "transformer",
        "--train",
        &train,
        "--test",
        &test,
        "--out",
        out_dir,
        "--merge",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("fold 1 was trained on {}", other.path().display()))
            && stderr.contains(&format!("fold 0 on {model} (fingerprint xxh3-all:")),
        "{stderr}"
    );
}

/// A learning rate that makes training diverge is named with the file that set it, and the
/// other rate in use with its default.
#[test]
fn a_diverging_learning_rate_is_named_with_its_config_file() {
    if !common::arena_sample_present() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("huge.toml");
    std::fs::write(&config, "learning_rate = 1e30\n").unwrap();
    let [train, test, model] = sample_and_model();
    let output = ensemble(&[
        "transformer",
        "--model",
        &model,
        "--train",
        &train,
        "--test",
        &test,
        "--out",
        out.path().join("run").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--folds",
        "3",
        "--fold",
        "0",
        "--max-len",
        "64",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let named = format!(
        "lower learning_rate = 1e30 (set in {}) or head_learning_rate = 1e-4 (the default: {} \
         does not set it)",
        config.display(),
        config.display()
    );
    assert!(
        stderr.contains("fold 0, step ") && stderr.contains(&named),
        "{stderr}"
    );
}

#[test]
fn f16_with_checkpointing_records_its_loss_scale() {
    if !common::arena_sample_present() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let [train, test, model] = sample_and_model();
    run_ok(&[
        "transformer",
        "--model",
        &model,
        "--train",
        &train,
        "--test",
        &test,
        "--out",
        out.path().to_str().unwrap(),
        "--folds",
        "3",
        "--fold",
        "0",
        "--max-len",
        "64",
        "--epochs",
        "1",
        "--precision",
        "f16",
        "--gradient-checkpointing",
    ]);
    let fold: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("fold-0/fold.json")).unwrap(),
    )
    .unwrap();
    let scaler = &fold["loss_scale"];
    let skipped = scaler["skipped_steps"]
        .as_u64()
        .expect("skipped steps recorded");
    // Fewer than 2,000 clean steps: the scale only ever halved from 2^16, once per skip.
    assert_eq!(
        scaler["scale"].as_f64(),
        Some(65536.0 / 2f64.powi(skipped as i32)),
        "{scaler}"
    );
    assert!(
        skipped < fold["steps"].as_u64().unwrap(),
        "every step skipped: {fold}"
    );
}

/// The LLM member through `transformer`, picked by the folder's model_type: folds trained
/// with LoRA on the tiny Qwen2 fixture, adapters saved in PEFT's format, the test file
/// predicted again from them bit for bit, with 8-bit base weights close to it, and refusals
/// of another base (its weights' fingerprint) and of a DeBERTa folder for an LLM run.
#[test]
fn transformer_trains_the_llm_member_and_predicts_from_its_adapters() {
    if !common::arena_sample_present() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let [train, test, deberta] = sample_and_model();
    let fixture = |name: &str| root().join("tests/fixtures").join(name);
    let qwen = fixture("tiny-llm-qwen2");
    let data = ["--train", &train, "--test", &test, "--out", out_dir];
    let with = |model: &Path, extra: &[&str]| -> Vec<String> {
        let mut args = vec!["transformer", "--model", model.to_str().unwrap()];
        args.extend(data);
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    let call = |args: &[String]| ensemble(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let output = call(&with(
        &qwen,
        &["--folds", "3", "--max-len", "96", "--epochs", "1"],
    ));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let metrics = read_json(&out.path().join("metrics.json"));
    assert_eq!(
        metrics["config"]["lora"]["r"], 16,
        "configs/llm.toml's defaults"
    );
    assert_eq!(metrics["config"]["max_len"], 96);
    let submission = std::fs::read_to_string(out.path().join("submission.csv")).unwrap();
    assert_eq!(submission.lines().count(), 1 + 3);
    for fold in 0..3 {
        let dir = out.path().join(format!("fold-{fold}"));
        let adapter: serde_json::Value = read_json(&dir.join("adapter/adapter_config.json"));
        assert_eq!(adapter["peft_type"], "LORA");
        assert!(dir.join("adapter/adapter_model.safetensors").is_file());
        let summary = read_json(&dir.join("fold.json"));
        let fingerprint = summary["base_model"]["fingerprint"].as_str().unwrap();
        assert!(
            fingerprint.starts_with("xxh3-all:") && fingerprint.len() == 9 + 16,
            "{fingerprint}"
        );
    }

    // Predicted again from the adapters on the same base: the same logits, bit for bit.
    let logits_file = out.path().join("fold-2/test_logits.csv");
    let trained = std::fs::read_to_string(&logits_file).unwrap();
    std::fs::remove_file(&logits_file).unwrap();
    let output = call(&with(&qwen, &["--predict-only"]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read_to_string(&logits_file).unwrap(), trained);

    // 8-bit base weights: close to the dense prediction, not equal to it.
    let output = call(&with(
        &qwen,
        &["--predict-only", "--int8-base", "--fold", "2"],
    ));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let values = |text: &str| -> Vec<f32> {
        text.lines()
            .skip(1)
            .flat_map(|l| l.split(',').skip(1).map(|v| v.parse::<f32>().unwrap()))
            .collect::<Vec<_>>()
    };
    let eight_bit = std::fs::read_to_string(&logits_file).unwrap();
    let moved = values(&trained)
        .iter()
        .zip(values(&eight_bit))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 0.0 && moved < 0.2, "8-bit logits moved by {moved}");

    // Another base (the Llama fixture) and a DeBERTa folder are refused by name.
    let output = call(&with(&fixture("tiny-llm-llama"), &["--predict-only"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("has other files (fingerprint"),
        "{stderr}"
    );
    let output = call(&with(Path::new(&deberta), &["--predict-only"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("is a DeBERTa folder, and the folds in"),
        "{stderr}"
    );

    // Without --out, an LLM run goes to runs/llm (not DeBERTa's runs/deberta).
    let cwd = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble"))
        .current_dir(cwd.path())
        .args([
            "transformer",
            "--model",
            qwen.to_str().unwrap(),
            "--train",
            &train,
        ])
        .args([
            "--test",
            &test,
            "--folds",
            "3",
            "--fold",
            "0",
            "--max-len",
            "96",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(cwd.path().join("runs/llm/fold-0/adapter").is_dir());
    assert!(!cwd.path().join("runs/deberta").exists());
}
