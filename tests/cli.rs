//! End-to-end runs of the `ensemble` binary on the real Kaggle sample rows in
//! `../shared/arena-sample` and on the generated example.
use std::path::Path;
use std::process::Command;

mod common;
use common::{arena_sample as shared, ensemble, read_json, run_ok, snapshot, temp_dir};

/// Rows of a prediction file: id and the three probabilities.
fn read_predictions(path: &Path) -> Vec<(String, [f64; 3])> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("id,winner_model_a,winner_model_b,winner_tie")
    );
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 4, "{line}");
            let p: Vec<f64> = fields[1..].iter().map(|f| f.parse().unwrap()).collect();
            (fields[0].to_owned(), [p[0], p[1], p[2]])
        })
        .collect()
}

fn ids_of(csv: &Path) -> Vec<String> {
    // Ids lead a record; continuation lines of multi-line fields never start with digits
    // followed by a comma and a quote in these files, so parse properly instead.
    let text = std::fs::read_to_string(csv).unwrap();
    let mut ids = Vec::new();
    let (mut in_quotes, mut at_record_start, mut field) = (false, true, String::new());
    for ch in text.chars().skip_while(|&c| c != '\n').skip(1) {
        if at_record_start {
            if ch == ',' {
                ids.push(std::mem::take(&mut field));
                at_record_start = false;
            } else {
                field.push(ch);
            }
            continue;
        }
        match ch {
            '"' => in_quotes = !in_quotes,
            '\n' if !in_quotes => at_record_start = true,
            _ => {}
        }
    }
    ids
}

#[test]
fn cv_on_the_arena_sample_writes_a_complete_run() {
    if !common::arena_sample_present() {
        return;
    }
    let out = temp_dir("arena-cv");
    let (train, test) = (shared("train.csv"), shared("test.csv"));
    run_ok(&[
        "cv",
        "--folds",
        "3",
        "--train",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);

    for file in [
        "folds.csv",
        "oof.csv",
        "submission.csv",
        "metrics.json",
        "importance.csv",
        "importance.svg",
        "models/fold_0.txt",
        "models/fold_2.txt",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let submission = read_predictions(&out.join("submission.csv"));
    let test_ids = ids_of(&test);
    assert_eq!(test_ids, ["136060", "211333", "1233961"]);
    assert_eq!(
        submission.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        test_ids
    );
    let oof = read_predictions(&out.join("oof.csv"));
    assert_eq!(
        oof.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        ids_of(&train)
    );
    for (id, p) in submission.iter().chain(&oof) {
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "id {id}: {p:?}");
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    let folds = std::fs::read_to_string(out.join("folds.csv")).unwrap();
    assert_eq!(folds.lines().count(), 101);
    let metrics: serde_json::Value = read_json(&out.join("metrics.json"));
    assert_eq!(metrics["train_rows"], 100);
    assert_eq!(metrics["folds"].as_array().unwrap().len(), 3);
    assert!(metrics["oof_log_loss"].as_f64().unwrap().is_finite());
    assert_predict_reproduces_submission(&out, &test);

    let importance = ensemble(&["importance", "--run", out.to_str().unwrap(), "--top", "5"]);
    assert!(importance.status.success());
    let table = String::from_utf8(importance.stdout).unwrap();
    assert_eq!(
        table.lines().count(),
        7,
        "header, rule and 5 rows:\n{table}"
    );
}

#[test]
fn reusing_folds_file_holds_out_the_same_rows() {
    if !common::arena_sample_present() {
        return;
    }
    let dir = temp_dir("arena-refold");
    let (folds, out) = (dir.join("given.csv"), dir.join("run"));
    let folds_text = |k: usize| {
        let mut text = String::from("id,fold\n");
        for (i, id) in ids_of(&shared("train.csv")).iter().enumerate() {
            text.push_str(&format!("{id},{}\n", i % k));
        }
        text
    };
    // Two folds leave nothing to train on beside the watched fold: refused before anything
    // is written, so no folds.csv of a failed run is left behind.
    std::fs::write(&folds, folds_text(2)).unwrap();
    let failed_out = dir.join("failed");
    let failed = ensemble(&[
        "cv",
        "--train",
        shared("train.csv").to_str().unwrap(),
        "--folds-file",
        folds.to_str().unwrap(),
        "--out",
        failed_out.to_str().unwrap(),
        "--no-tfidf",
    ]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("needs at least 3 folds"), "{stderr}");
    assert!(!failed_out.exists(), "a failed run leaves no run folder");

    let text = folds_text(3);
    std::fs::write(&folds, &text).unwrap();
    run_ok(&[
        "cv",
        "--train",
        shared("train.csv").to_str().unwrap(),
        "--test",
        shared("test.csv").to_str().unwrap(),
        "--folds-file",
        folds.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-tfidf",
        "--max-rounds",
        "20",
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("folds.csv")).unwrap(),
        text
    );
}

#[test]
fn grouped_folds_hold_out_each_prompt_whole() {
    if !common::arena_sample_present() {
        return;
    }
    let dir = temp_dir("grouped");
    let out = dir.join("run");
    // 48 battles over 8 prompts, 6 each; prompt 7 has two turns.
    let train = common::battles_over_prompts(48, 8);
    std::fs::write(dir.join("train.csv"), train).unwrap();
    let run = |group_by: &str| {
        let output = run_ok(&[
            "cv",
            "--train",
            dir.join("train.csv").to_str().unwrap(),
            "--test",
            shared("test.csv").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--folds",
            "4",
            "--group-by",
            group_by,
            "--no-tfidf",
        ]);
        let metrics: serde_json::Value = read_json(&out.join("metrics.json"));
        (
            String::from_utf8_lossy(&output.stderr).into_owned(),
            metrics,
        )
    };
    // Plain stratified folds spread all 8 prompts over several folds, and say so.
    let (stderr, metrics) = run("none");
    assert!(
        stderr.contains("warning: 8 prompts (48 battles) appear in more than one fold"),
        "{stderr}"
    );
    assert_eq!(metrics["prompts_across_folds"]["prompts"], 8);
    let (stderr, metrics) = run("prompt");
    assert!(!stderr.contains("more than one fold"), "{stderr}");
    assert_eq!(metrics["prompts_across_folds"]["battles"], 0);
    let folds: Vec<usize> = std::fs::read_to_string(out.join("folds.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(folds.len(), 48);
    for i in 0..48 {
        assert_eq!(folds[i], folds[i % 8], "battle {i} left its prompt's fold");
    }
    let mut used = folds.clone();
    used.sort();
    used.dedup();
    assert_eq!(used, [0, 1, 2, 3]);
}

#[test]
fn bad_inputs_are_reported_with_file_line_and_id() {
    let dir = temp_dir("bad-input");
    let header = "id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n";
    let good = "1,x,y,\"[\"\"hi\"\"]\",\"[\"\"a\nb\"\"]\",\"[\"\"c\"\"]\",1,0,0\n";
    let cases = [
        (
            format!("{header}{good}2,x,y,\"[]\",\"[]\",\"[]\",1,1,0\n"),
            "line 4 (id 2): winner_model_a, winner_model_b, winner_tie must be 0 or 1",
        ),
        (
            format!("{header}{good}1,x,y,\"[]\",\"[]\",\"[]\",0,1,0\n"),
            "line 4 (id 1): the id appears twice",
        ),
        (
            "id,prompt,response_a\n1,a,b\n".to_owned(),
            "missing column(s) response_b",
        ),
        // An interrupted download: the file stops inside a quoted field.
        (
            format!("{header}{good}2,x,y,\"[\"\"an answer cut"),
            "the file ends inside a quoted field (the record starting on line 4)",
        ),
        (
            format!("{header}{good}2,x,y,\"[]\",\"[]\"\n"),
            "line 4: 5 fields where the header has 9",
        ),
        (
            format!("{}{good}", header.replace("response_b", "prompt")),
            "line 1: the column prompt appears twice",
        ),
    ];
    let test = dir.join("test.csv");
    std::fs::write(
        &test,
        "id,prompt,response_a,response_b\n5,\"[]\",\"[]\",\"[]\"\n",
    )
    .unwrap();
    for (i, (text, needle)) in cases.iter().enumerate() {
        let train = dir.join(format!("train{i}.csv"));
        std::fs::write(&train, text).unwrap();
        let output = ensemble(&[
            "cv",
            "--train",
            train.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--out",
            dir.join("run").to_str().unwrap(),
        ]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(needle) && stderr.contains(&format!("train{i}.csv")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !dir.join("run").exists(),
            "a failed run leaves no run folder"
        );
    }
    // Bytes that are not UTF-8 text, named with their line; UTF-16 named as such.
    for (name, bytes, needle) in [
        (
            "latin1.csv",
            [
                header.as_bytes(),
                good.as_bytes(),
                b"2,x,y,\"[\"\"caf\xe9\"\"]\",\"[]\",\"[]\",1,0,0\n",
            ]
            .concat(),
            "latin1.csv, line 4: not UTF-8 text",
        ),
        (
            "utf16.csv",
            header.encode_utf16().flat_map(u16::to_le_bytes).collect(),
            "utf16.csv: UTF-16 text; save the file as UTF-8 CSV",
        ),
    ] {
        let train = dir.join(name);
        std::fs::write(&train, bytes).unwrap();
        let output = ensemble(&["cv", "--train", train.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(needle),
            "{stderr}"
        );
    }
    // A header repeated inside test.csv is not a battle with id "id".
    let train = dir.join("train_good.csv");
    std::fs::write(&train, format!("{header}{good}")).unwrap();
    let doubled = dir.join("test_doubled.csv");
    std::fs::write(
        &doubled,
        "id,prompt,response_a,response_b\n5,\"[]\",\"[]\",\"[]\"\nid,prompt,response_a,response_b\n",
    )
    .unwrap();
    let output = ensemble(&[
        "cv",
        "--train",
        train.to_str().unwrap(),
        "--test",
        doubled.to_str().unwrap(),
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("test_doubled.csv, line 3: a second header row"),
        "{stderr}"
    );
    let missing = ensemble(&["cv", "--train", "no/such.csv", "--test", "no/such.csv"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read no/such.csv"));
}

#[test]
fn one_command_runs_on_the_generated_example() {
    let out = temp_dir("example");
    let output = run_ok(&["cv", "--folds", "3", "--out", out.to_str().unwrap()]);
    // A newcomer's first run does not warn about data the tool made itself.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
    let metrics: serde_json::Value = read_json(&out.join("metrics.json"));
    let (loss, prior) = (
        metrics["oof_log_loss"].as_f64().unwrap(),
        metrics["prior_log_loss"].as_f64().unwrap(),
    );
    // The example carries real signal: the model must beat the class prior clearly.
    assert!(loss < prior - 0.05, "OOF {loss} vs prior {prior}");
    assert_eq!(read_predictions(&out.join("submission.csv")).len(), 200);
    assert_predict_reproduces_submission(&out, &out.join("example/test.csv"));
}

/// `--seeds 2` trains two models per fold and averages them: the files are there, the fold
/// reports list both models' rounds, `predict` reproduces the submission, and a later
/// one-seed run in the same folder leaves no second-seed file behind.
#[test]
fn seed_averaging_saves_every_model_and_predict_uses_them_all() {
    let out = temp_dir("seeds");
    let one = temp_dir("seeds-one");
    run_ok(&[
        "cv",
        "--folds",
        "3",
        "--seeds",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    for fold in 0..3 {
        for file in [format!("fold_{fold}.txt"), format!("fold_{fold}.seed1.txt")] {
            assert!(out.join("models").join(&file).is_file(), "{file} missing");
        }
    }
    let metrics: serde_json::Value = read_json(&out.join("metrics.json"));
    for fold in metrics["folds"].as_array().unwrap() {
        assert_eq!(fold["best_iterations"].as_array().unwrap().len(), 2);
    }
    assert_predict_reproduces_submission(&out, &out.join("example/test.csv"));

    // One seed on the same folds: other OOF predictions (the second model counts). The
    // inputs come out of the run folder first: a run folder cannot hold its run's inputs.
    let data = temp_dir("seeds-data");
    let (folds, train) = (data.join("folds.csv"), data.join("train.csv"));
    std::fs::copy(out.join("folds.csv"), &folds).unwrap();
    std::fs::copy(out.join("example/train.csv"), &train).unwrap();
    let args = |dir: &Path, folds: &Path, train: &Path| {
        [
            "cv",
            "--folds-file",
            folds.to_str().unwrap(),
            "--train",
            train.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ]
        .map(str::to_owned)
    };
    fn as_str(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }
    let before = snapshot(&out);
    let inside = ensemble(&as_str(&args(
        &out,
        &out.join("folds.csv"),
        &out.join("example/train.csv"),
    )));
    let stderr = String::from_utf8_lossy(&inside.stderr);
    assert!(
        !inside.status.success() && stderr.contains("holds --train"),
        "{stderr}"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "a refused run leaves the folder alone"
    );

    run_ok(&as_str(&args(&one, &folds, &train)));
    assert_ne!(
        read_predictions(&one.join("oof.csv")),
        read_predictions(&out.join("oof.csv"))
    );
    run_ok(&as_str(&args(&out, &folds, &train)));
    // The rerun replaced the folder as a whole: exactly the one-seed run's files, nothing of
    // the two-seed run (its second models, its example) is left.
    let names = |dir: &Path| snapshot(dir).into_keys().collect::<Vec<_>>();
    assert_eq!(names(&out), names(&one));
    assert!(!out.join("models/fold_0.seed1.txt").exists());
    assert!(!out.join("example").exists());
    assert_eq!(
        read_predictions(&one.join("oof.csv")),
        read_predictions(&out.join("oof.csv"))
    );
}

/// A run that fails after the features are computed leaves the earlier run folder exactly as
/// it was, and no staging folder beside it.
#[test]
fn a_failed_run_leaves_the_earlier_run_folder_as_it_was() {
    let dir = temp_dir("failed-rerun");
    run_ok(&[
        "example",
        "--out",
        dir.join("data").to_str().unwrap(),
        "--rows",
        "300",
        "--test-rows",
        "10",
    ]);
    let out = dir.join("run");
    let cv = |folds: &str| {
        ensemble(&[
            "cv",
            "--train",
            dir.join("data/train.csv").to_str().unwrap(),
            "--test",
            dir.join("data/test.csv").to_str().unwrap(),
            "--folds",
            folds,
            "--no-tfidf",
            "--max-rounds",
            "20",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    assert!(cv("3").status.success());
    let before = snapshot(&out);
    assert!(before.contains_key(Path::new("metrics.json")), "{before:?}");
    // Two folds cannot stop early on an inner fold: found once the features are computed.
    let failed = cv("2");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && stderr.contains("needs at least 3 folds"),
        "{stderr}"
    );
    assert!(
        stderr.contains("features"),
        "failed after the features: {stderr}"
    );
    assert_eq!(snapshot(&out), before);
    let beside: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(beside, ["data", "run"]);

    // A write that would fail midway in the earlier folder (its oof.csv is a folder now)
    // cannot leave a mix of two runs: the new run is written apart and swapped in whole.
    std::fs::remove_file(out.join("oof.csv")).unwrap();
    std::fs::create_dir_all(out.join("oof.csv/stale")).unwrap();
    let rerun = cv("3");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        snapshot(&out).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(out.join("oof.csv").is_file());
}

/// A run folder is replaced as a whole, so folders that are not a run's own are refused
/// before anything runs: the current directory or one above it, a folder holding the inputs,
/// a folder of other files. Each is left as it was.
#[test]
fn out_folders_that_are_not_a_runs_own_are_refused() {
    let dir = temp_dir("out-refused");
    let data = dir.join("data");
    run_ok(&[
        "example",
        "--out",
        data.to_str().unwrap(),
        "--rows",
        "60",
        "--test-rows",
        "5",
    ]);
    let notes = dir.join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), "keep me\n").unwrap();
    let here = "is the current directory or a folder above it";
    for (cwd, train, out, needle) in [
        (&data, "train.csv", ".", format!("--out . {here}")),
        (&data, "train.csv", "..", format!("--out .. {here}")),
        (
            &data,
            "train.csv",
            "../data/",
            format!("--out ../data/ {here}"),
        ),
        (
            &dir,
            "data/train.csv",
            "data",
            "--out data holds --train data/train.csv".into(),
        ),
        (
            &dir,
            "data/train.csv",
            "notes",
            "--out notes holds files that no run wrote".into(),
        ),
    ] {
        let before = snapshot(&dir);
        let output = Command::new(env!("CARGO_BIN_EXE_ensemble"))
            .current_dir(cwd)
            .args(["cv", "--train", train, "--out", out])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--out {out}: {stderr}");
        assert!(stderr.contains(&needle), "--out {out}: {stderr}");
        assert_eq!(snapshot(&dir), before, "--out {out} changed files");
    }
}

/// `predict` with the run's saved state on the run's own test file writes the submission
/// `cv` wrote, within 1e-9; a run folder that lost a part is refused, naming it.
fn assert_predict_reproduces_submission(run: &Path, test: &Path) {
    let predicted = run.with_extension("predicted");
    let args = |run: &Path| {
        [
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--test",
            test.to_str().unwrap(),
            "--out",
            predicted.to_str().unwrap(),
        ]
        .map(str::to_owned)
    };
    let ensemble_args =
        |run: &Path| ensemble(&args(run).iter().map(|a| a.as_str()).collect::<Vec<_>>());
    let output = ensemble_args(run);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (expected, got) = (
        read_predictions(&run.join("submission.csv")),
        read_predictions(&predicted.join("submission.csv")),
    );
    assert_eq!(expected.len(), got.len());
    for ((id, p), (got_id, q)) in expected.iter().zip(&got) {
        assert_eq!(id, got_id);
        for k in 0..3 {
            assert!((p[k] - q[k]).abs() < 1e-9, "id {id}: {p:?} vs {q:?}");
        }
    }

    let refused = |edit: &dyn Fn(&Path), expected: &str| {
        let copy = run.with_extension("damaged");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(copy.join("models")).unwrap();
        for entry in ["features.json", "metrics.json", "encoder.json"] {
            if run.join(entry).exists() {
                std::fs::copy(run.join(entry), copy.join(entry)).unwrap();
            }
        }
        for entry in std::fs::read_dir(run.join("models")).unwrap() {
            let entry = entry.unwrap().path();
            std::fs::copy(&entry, copy.join("models").join(entry.file_name().unwrap())).unwrap();
        }
        edit(&copy);
        let output = ensemble_args(&copy);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{stderr}"
        );
    };
    refused(
        &|run| std::fs::remove_file(run.join("features.json")).unwrap(),
        "features.json: the run folder lacks the fitted feature state",
    );
    refused(
        &|run| std::fs::remove_file(run.join("models/fold_2.txt")).unwrap(),
        "fold_2.txt is missing",
    );
    refused(
        &|run| std::fs::write(run.join("models/fold_1.txt"), "tree\nnot a model").unwrap(),
        "fold_1.txt: not a LightGBM model",
    );
    let into_run = ensemble(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&into_run.stderr);
    assert!(stderr.contains("holds --run"), "{stderr}");
}

#[test]
fn blend_of_one_cv_run_reproduces_it_and_finds_its_training_file() {
    if !common::arena_sample_present() {
        return;
    }
    let out = temp_dir("arena-blend");
    let run = out.join("lgbm");
    run_ok(&[
        "cv",
        "--folds",
        "3",
        "--train",
        shared("train.csv").to_str().unwrap(),
        "--test",
        shared("test.csv").to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--no-tfidf",
    ]);
    let submission = out.join("submission.csv");
    run_ok(&[
        "blend",
        "--members",
        run.to_str().unwrap(),
        "--weights",
        "auto",
        "--out",
        submission.to_str().unwrap(),
    ]);
    let blended = read_predictions(&submission);
    let member = read_predictions(&run.join("submission.csv"));
    assert_eq!(blended.len(), 3);
    for ((id, p), (member_id, q)) in blended.iter().zip(&member) {
        assert_eq!(id, member_id);
        for k in 0..3 {
            assert!((p[k] - q[k]).abs() < 1e-9, "id {id}: {p:?} vs {q:?}");
        }
    }
    let report: serde_json::Value = read_json(&out.join("blend.json"));
    assert!(report.to_string().contains("lgbm"));

    // Inside the member's folder, the default --out is the member's own submission: refused,
    // and the member's file is left as it was.
    let before = std::fs::read_to_string(run.join("submission.csv")).unwrap();
    let inside = Command::new(env!("CARGO_BIN_EXE_ensemble"))
        .current_dir(&run)
        .args(["blend", "--members", "."])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&inside.stderr);
    assert!(!inside.status.success());
    assert!(stderr.contains("would overwrite member"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(run.join("submission.csv")).unwrap(),
        before
    );
}

#[test]
fn cv_without_test_writes_out_of_fold_predictions_only() {
    if !common::arena_sample_present() {
        return;
    }
    let out = temp_dir("arena-oof-only");
    let train = shared("train.csv");
    let cv = |test: Option<&Path>| {
        let mut args = vec![
            "cv",
            "--folds",
            "3",
            "--no-tfidf",
            "--train",
            train.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if let Some(test) = test {
            args.extend(["--test", test.to_str().unwrap()]);
        }
        run_ok(&args)
    };
    // A submission left by an earlier run in the same folder must not survive as if current.
    cv(Some(&shared("test.csv")));
    assert!(out.join("submission.csv").is_file());
    let output = cv(None);
    assert!(String::from_utf8_lossy(&output.stdout).contains("no submission.csv"));
    assert!(!out.join("submission.csv").exists());
    for file in ["folds.csv", "oof.csv", "metrics.json", "importance.csv"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // Every training id once, in the training file's order.
    let oof: Vec<String> = read_predictions(&out.join("oof.csv"))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(oof, ids_of(&train));
    let metrics: serde_json::Value = read_json(&out.join("metrics.json"));
    assert!(metrics["test"].is_null());
    assert_eq!(metrics["test_rows"], 0);
}

#[test]
fn lightgbm_extra_parameters_are_checked_before_anything_is_written() {
    let dir = temp_dir("lgbm-extra");
    for (extra, needle) in [
        (
            "lambda_l3 = \"1\"",
            "lambda_l3 = \"1\": not a LightGBM parameter",
        ),
        (
            "lambda_l1 = \"1 num_leaves=2\"",
            "lambda_l1 = \"1 num_leaves=2\": a value must be one word",
        ),
        ("metrics = \"auc\"", "metrics = \"auc\": set by this tool"),
        (
            "eta = \"0.05\"",
            "[lgbm.extra] eta = \"0.05\": the LightGBM parameter learning_rate, which [lgbm] \
             learning_rate sets; set it there only",
        ),
    ] {
        let config = dir.join("lgbm.toml");
        std::fs::write(&config, format!("[lgbm.extra]\n{extra}\n")).unwrap();
        let out = dir.join("run");
        let output = ensemble(&[
            "cv",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(needle), "{stderr}");
        assert!(
            !out.exists(),
            "{extra}: a failed run left {}",
            out.display()
        );
    }
}

#[test]
fn lightgbm_settings_that_make_no_sense_are_refused_up_front() {
    let dir = temp_dir("lgbm-settings");
    let config = dir.join("lgbm.toml");
    std::fs::write(&config, "[lgbm]\nlearning_rate = 0.0\n").unwrap();
    let out = dir.join("run");
    for (args, needle) in [
        (
            vec!["--max-rounds", "0"],
            "--max-rounds = 0: at least 1 boosting round",
        ),
        (
            vec!["--config", config.to_str().unwrap()],
            "[lgbm] learning_rate = 0: must be a finite number above 0",
        ),
        (
            vec!["--num-leaves", "1"],
            "--num-leaves = 1: a tree needs at least 2 leaves",
        ),
    ] {
        let mut command = vec!["cv", "--out", out.to_str().unwrap()];
        command.extend(args);
        let output = ensemble(&command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(needle),
            "{stderr}"
        );
        assert!(
            !stderr.contains("features"),
            "refused before any work: {stderr}"
        );
        assert!(!out.exists());
    }
}

/// `cv --encoder` with the tiny BERT fixture: semantic columns in the run, a second run served
/// by the cache alone, `predict` embedding the new test file with the recorded encoder and
/// reproducing the submission, and a different encoder refused by fingerprint.
#[test]
fn semantic_features_are_cached_recorded_and_checked_on_predict() {
    let dir = temp_dir("encoder");
    let encoder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[encoder]\ncache_dir = {:?}\n",
            dir.join("cache").to_str().unwrap()
        ),
    )
    .unwrap();
    let run = dir.join("run");
    let cv = [
        "cv",
        "--folds",
        "3",
        "--config",
        config.to_str().unwrap(),
        "--encoder",
        encoder.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ];
    let metrics = || -> serde_json::Value { read_json(&run.join("metrics.json")) };
    run_ok(&cv);
    let first = metrics();
    let embedded = first["embedding"]["embedded"].as_u64().unwrap();
    assert!(
        embedded > 0 && first["embedding"]["from_cache"] == 0,
        "{first}"
    );
    let importance = std::fs::read_to_string(run.join("importance.csv")).unwrap();
    for column in [
        "a_sem_sim_prompt",
        "b_sem_sim_prompt",
        "diff_sem_sim_prompt",
        "sem_sim_ab",
    ] {
        assert!(importance.contains(column), "{column} missing");
    }
    run_ok(&cv);
    let second = metrics();
    assert_eq!(
        second["embedding"]["embedded"], 0,
        "the second run embeds nothing"
    );
    assert_eq!(second["embedding"]["from_cache"].as_u64(), Some(embedded));
    assert_eq!(first["oof_log_loss"], second["oof_log_loss"]);

    assert_predict_reproduces_submission(&run, &run.join("example/test.csv"));

    // Another encoder (CLS instead of mean pooling) is refused by fingerprint.
    let other = dir.join("other-encoder");
    std::fs::create_dir_all(other.join("1_Pooling")).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(encoder.join(file), other.join(file)).unwrap();
    }
    std::fs::write(
        other.join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    let output = ensemble(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--test",
        run.join("example/test.csv").to_str().unwrap(),
        "--out",
        dir.join("predicted").to_str().unwrap(),
        "--encoder",
        other.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("encoder.json: the run was made with another sentence encoder"),
        "{stderr}"
    );
}
