use super::*;
use ensemble_core::metrics::log_loss;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn softmax(z: Probs) -> Probs {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = z.map(|v| (v - max).exp());
    let total: f64 = e.iter().sum();
    e.map(|v| v / total)
}

/// A random prediction; larger `sharpness` gives more confident ones.
fn random_probs(rng: &mut StdRng, sharpness: f64) -> Probs {
    softmax([(); 3].map(|_| sharpness * (rng.random::<f64>() - 0.5)))
}

fn sample(rng: &mut StdRng, p: Probs) -> Outcome {
    let u: f64 = rng.random();
    let class = if u < p[0] {
        0
    } else if u < p[0] + p[1] {
        1
    } else {
        2
    };
    Outcome::from_index(class).unwrap()
}

fn mixture(weights: &[f64], members: &[Probs]) -> Probs {
    let mut mixed = [0.0; 3];
    for (w, p) in weights.iter().zip(members) {
        for c in 0..3 {
            mixed[c] += w * p[c];
        }
    }
    mixed
}

fn geometric(weights: &[f64], members: &[Probs]) -> Probs {
    let mut z = [0.0; 3];
    for (w, p) in weights.iter().zip(members) {
        for c in 0..3 {
            z[c] += w * p[c].ln();
        }
    }
    softmax(z)
}

/// Members with random predictions and labels drawn from `truth` of the members' row.
fn synthetic(
    seed: u64,
    n_rows: usize,
    sharpness: &[f64],
    truth: impl Fn(&[Probs]) -> Probs,
) -> (Vec<Vec<Probs>>, Vec<Outcome>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut members = vec![Vec::with_capacity(n_rows); sharpness.len()];
    let mut labels = Vec::with_capacity(n_rows);
    for _ in 0..n_rows {
        let row: Vec<Probs> = sharpness
            .iter()
            .map(|&s| random_probs(&mut rng, s))
            .collect();
        labels.push(sample(&mut rng, truth(&row)));
        for (member, p) in members.iter_mut().zip(row) {
            member.push(p);
        }
    }
    (members, labels)
}

fn auto(space: Space) -> Method {
    Method::Weighted {
        space,
        weights: WeightChoice::Auto,
        calibrate: false,
    }
}

fn fixed_loss(space: Space, weights: &[f64], oof: &MemberMatrix, labels: &[Outcome]) -> f64 {
    let blend = WeightedBlend {
        space,
        weights: weights.to_vec(),
        inverse_temperature: 1.0,
    };
    log_loss(labels, &blend.predict(oof))
}

/// The fitted weights are optimal: no point of the simplex (random ones, the vertices, the
/// given `truth`) scores better on the same rows.
fn assert_optimal(
    space: Space,
    fitted: &[f64],
    truth: &[f64],
    oof: &MemberMatrix,
    labels: &[Outcome],
) {
    let best = fixed_loss(space, fitted, oof, labels);
    let mut rng = StdRng::seed_from_u64(99);
    let m = fitted.len();
    let mut candidates: Vec<Vec<f64>> = (0..200)
        .map(|_| {
            let raw: Vec<f64> = (0..m).map(|_| -rng.random::<f64>().ln()).collect();
            let total: f64 = raw.iter().sum();
            raw.iter().map(|r| r / total).collect()
        })
        .collect();
    candidates.push(truth.to_vec());
    candidates.extend((0..m).map(|k| (0..m).map(|j| f64::from(u8::from(j == k))).collect()));
    for candidate in candidates {
        let loss = fixed_loss(space, &candidate, oof, labels);
        assert!(
            loss >= best - 1e-12,
            "{candidate:?} scores {loss} < {best} of {fitted:?}"
        );
    }
}

#[test]
fn auto_weights_recover_a_known_probability_mixture() {
    let truth = [0.5, 0.3, 0.2];
    let (members, labels) = synthetic(1, 60_000, &[4.0, 6.0, 8.0], |row| mixture(&truth, row));
    let oof = MemberMatrix::from_members(&members).unwrap();
    let blend = WeightedBlend::fit(
        Space::Probability,
        &WeightChoice::Auto,
        false,
        &oof,
        &labels,
    )
    .unwrap();
    for (w, t) in blend.weights.iter().zip(truth) {
        assert!(
            (w - t).abs() < 0.03,
            "fitted {:?}, truth {truth:?}",
            blend.weights
        );
    }
    assert!((blend.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_optimal(Space::Probability, &blend.weights, &truth, &oof, &labels);
}

#[test]
fn auto_weights_recover_a_known_geometric_mixture_and_drop_a_useless_member() {
    let truth = [0.6, 0.4, 0.0];
    let (members, labels) = synthetic(2, 60_000, &[5.0, 5.0, 5.0], |row| geometric(&truth, row));
    let oof = MemberMatrix::from_members(&members).unwrap();
    let blend =
        WeightedBlend::fit(Space::Logit, &WeightChoice::Auto, false, &oof, &labels).unwrap();
    for (w, t) in blend.weights.iter().zip(truth) {
        assert!(
            (w - t).abs() < 0.03,
            "fitted {:?}, truth {truth:?}",
            blend.weights
        );
    }
    assert!(blend.weights.iter().all(|&w| w >= 0.0));
    assert_optimal(Space::Logit, &blend.weights, &truth, &oof, &labels);
}

#[test]
fn a_member_that_only_adds_noise_gets_almost_no_weight() {
    // Labels follow member 0 exactly; member 1 is pure noise, and so is its mixture weight.
    let (members, labels) = synthetic(3, 20_000, &[6.0, 6.0], |row| row[0]);
    let oof = MemberMatrix::from_members(&members).unwrap();
    let blend = WeightedBlend::fit(
        Space::Probability,
        &WeightChoice::Auto,
        false,
        &oof,
        &labels,
    )
    .unwrap();
    assert!(blend.weights[1] < 0.02, "{:?}", blend.weights);
    assert_optimal(
        Space::Probability,
        &blend.weights,
        &[1.0, 0.0],
        &oof,
        &labels,
    );
}

#[test]
fn the_blend_is_never_worse_in_sample_than_its_best_member() {
    for seed in 0..5 {
        let (members, labels) = synthetic(10 + seed, 3_000, &[2.0, 5.0, 9.0, 3.0], |row| {
            mixture(&[0.1, 0.4, 0.2, 0.3], row)
        });
        let oof = MemberMatrix::from_members(&members).unwrap();
        let folds = Folds::stratified(&labels, 5, seed).unwrap();
        let best_member = members
            .iter()
            .map(|m| log_loss(&labels, m))
            .fold(f64::INFINITY, f64::min);
        for method in [auto(Space::Probability), auto(Space::Logit)] {
            let fit = fit_blend(&oof, &oof, &labels, &folds, &method).unwrap();
            let blended = log_loss(&labels, &fit.in_sample);
            assert!(
                blended <= best_member + 1e-12,
                "seed {seed}, {method:?}: blend {blended} > best member {best_member}"
            );
        }
    }
}

/// The methods whose nested estimate is checked: plain weights, weights with a temperature,
/// a stack.
fn fitted_methods() -> [Method; 3] {
    [
        auto(Space::Probability),
        Method::Weighted {
            space: Space::Logit,
            weights: WeightChoice::Auto,
            calibrate: true,
        },
        Method::Stack,
    ]
}

/// The nested predictions of `fold`'s rows.
fn held_out(fit: &BlendFit, folds: &Folds, fold: usize) -> Vec<Probs> {
    folds.split(fold).1.iter().map(|&r| fit.nested[r]).collect()
}

#[test]
fn nested_predictions_are_the_other_folds_fit_applied_to_the_held_out_fold() {
    let (members, labels) = synthetic(20, 90, &[2.0, 4.0, 6.0], |row| {
        mixture(&[0.2, 0.5, 0.3], row)
    });
    let oof = MemberMatrix::from_members(&members).unwrap();
    let folds = Folds::stratified(&labels, 3, 1).unwrap();
    // The rows of each member, rebuilt from the raw predictions rather than from `oof`.
    let select = |rows: &[usize]| {
        let picked: Vec<Vec<Probs>> = members
            .iter()
            .map(|m| rows.iter().map(|&r| m[r]).collect())
            .collect();
        MemberMatrix::from_members(&picked).unwrap()
    };
    for method in fitted_methods() {
        let fit = fit_blend(&oof, &oof, &labels, &folds, &method).unwrap();
        for fold in 0..3 {
            let (train, test) = folds.split(fold);
            let train_labels: Vec<Outcome> = train.iter().map(|&r| labels[r]).collect();
            let (train, test) = (select(&train), select(&test));
            let by_hand = match &method {
                Method::Weighted {
                    space,
                    weights,
                    calibrate,
                } => WeightedBlend::fit(*space, weights, *calibrate, &train, &train_labels)
                    .unwrap()
                    .predict(&test),
                Method::Stack => StackModel::fit(&train, &train_labels)
                    .unwrap()
                    .predict(&test),
            };
            assert_eq!(
                held_out(&fit, &folds, fold),
                by_hand,
                "{method:?}, fold {fold}"
            );
            let test_labels: Vec<Outcome> =
                folds.split(fold).1.iter().map(|&r| labels[r]).collect();
            assert_eq!(
                fit.nested_fold_losses[fold],
                log_loss(&test_labels, &by_hand),
                "{method:?}, fold {fold}"
            );
        }
        assert_ne!(fit.nested, fit.in_sample, "{method:?}");
    }
}

#[test]
fn relabelling_a_fold_leaves_its_nested_predictions_unchanged() {
    let (members, labels) = synthetic(30, 400, &[2.0, 4.0, 6.0, 3.0], |row| {
        mixture(&[0.1, 0.4, 0.2, 0.3], row)
    });
    let oof = MemberMatrix::from_members(&members).unwrap();
    let folds = Folds::stratified(&labels, 4, 0).unwrap();
    let mut relabelled = labels.clone();
    for row in folds.split(2).1 {
        relabelled[row] = relabelled[row].swapped();
    }
    for method in fitted_methods() {
        let fit = fit_blend(&oof, &oof, &labels, &folds, &method).unwrap();
        let again = fit_blend(&oof, &oof, &relabelled, &folds, &method).unwrap();
        // Fold 2's predictions come from a fit that never saw its labels: not one bit moves.
        assert_eq!(
            held_out(&again, &folds, 2),
            held_out(&fit, &folds, 2),
            "{method:?}"
        );
        // Every other fit trains on fold 2's rows, and moves.
        assert_ne!(again.in_sample, fit.in_sample, "{method:?}");
        for fold in [0, 1, 3] {
            assert_ne!(
                held_out(&again, &folds, fold),
                held_out(&fit, &folds, fold),
                "{method:?}, fold {fold}"
            );
        }
    }
}

#[test]
fn a_one_member_blend_is_that_member() {
    let (members, labels) = synthetic(4, 500, &[5.0], |row| row[0]);
    let oof = MemberMatrix::from_members(&members).unwrap();
    let folds = Folds::stratified(&labels, 5, 0).unwrap();
    let member = &members[0];
    for method in [auto(Space::Probability), auto(Space::Logit)] {
        let fit = fit_blend(&oof, &oof, &labels, &folds, &method).unwrap();
        assert_eq!(fit.weights, Some(vec![1.0]));
        for (blended, original) in fit.test.iter().zip(member) {
            for c in 0..3 {
                assert!((blended[c] - original[c]).abs() < 1e-12, "{method:?}");
            }
        }
        assert!((log_loss(&labels, &fit.nested) - log_loss(&labels, member)).abs() < 1e-12);
    }
}

#[test]
fn fixed_weights_give_the_plain_mixture_and_must_match_the_members() {
    let (members, labels) = synthetic(5, 200, &[3.0, 6.0], |row| row[0]);
    let oof = MemberMatrix::from_members(&members).unwrap();
    let fixed = WeightChoice::Fixed(vec![7.0, 3.0]);
    let blend = WeightedBlend::fit(Space::Probability, &fixed, false, &oof, &labels).unwrap();
    assert_eq!(blend.weights, vec![0.7, 0.3]);
    let predicted = blend.predict(&oof);
    for (row, p) in predicted.iter().enumerate() {
        let expected = mixture(&[0.7, 0.3], &[members[0][row], members[1][row]]);
        assert!((0..3).all(|c| (p[c] - expected[c]).abs() < 1e-12));
    }
    for bad in [
        vec![1.0],
        vec![0.5, -0.1],
        vec![0.0, 0.0],
        vec![f64::NAN, 1.0],
    ] {
        let choice = WeightChoice::Fixed(bad.clone());
        assert!(
            WeightedBlend::fit(Space::Probability, &choice, false, &oof, &labels).is_err(),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn calibration_recovers_the_temperature_of_an_overconfident_member() {
    // The member reports p³ renormalised: its log-probabilities are 3 ln p + const, so the
    // temperature that restores the truth p is 3.
    let mut rng = StdRng::seed_from_u64(6);
    let (mut member, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..30_000 {
        let truth = random_probs(&mut rng, 3.0);
        labels.push(sample(&mut rng, truth));
        member.push(softmax(truth.map(|p| 3.0 * p.ln())));
    }
    let oof = MemberMatrix::from_members(&[member.clone()]).unwrap();
    for space in [Space::Probability, Space::Logit] {
        let blend = WeightedBlend::fit(space, &WeightChoice::Auto, true, &oof, &labels).unwrap();
        let temperature = 1.0 / blend.inverse_temperature;
        assert!((temperature - 3.0).abs() < 0.15, "{space:?}: {temperature}");
        let calibrated = log_loss(&labels, &blend.predict(&oof));
        assert!(calibrated < log_loss(&labels, &member) - 0.05);
    }
}

#[test]
fn stacking_repairs_a_member_that_a_weighted_blend_cannot() {
    // The member swaps A and B and is overconfident: no weighting helps, a stack undoes both.
    let mut rng = StdRng::seed_from_u64(7);
    let (mut swapped, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..6_000 {
        let truth = random_probs(&mut rng, 4.0);
        labels.push(sample(&mut rng, truth));
        swapped.push(softmax(
            [truth[1], truth[0], truth[2]].map(|p| 2.0 * p.ln()),
        ));
    }
    let oof = MemberMatrix::from_members(&[swapped.clone()]).unwrap();
    let folds = Folds::stratified(&labels, 5, 0).unwrap();
    let fit = fit_blend(&oof, &oof, &labels, &folds, &Method::Stack).unwrap();
    let member_loss = log_loss(&labels, &swapped);
    let stacked = log_loss(&labels, &fit.nested);
    assert!(
        stacked < member_loss - 0.5,
        "stack {stacked}, member {member_loss}"
    );
    assert!(
        stacked < 3f64.ln(),
        "better than knowing nothing: {stacked}"
    );
    assert!(fit.weights.is_none() && fit.temperature.is_none());
}

#[test]
fn stacking_matches_a_good_member_it_cannot_improve() {
    let (members, labels) = synthetic(8, 6_000, &[5.0, 2.0], |row| row[0]);
    let oof = MemberMatrix::from_members(&members).unwrap();
    let folds = Folds::stratified(&labels, 5, 0).unwrap();
    let fit = fit_blend(&oof, &oof, &labels, &folds, &Method::Stack).unwrap();
    let weak = log_loss(&labels, &members[1]);
    let good = log_loss(&labels, &members[0]);
    let stacked = log_loss(&labels, &fit.nested);
    assert!(stacked < weak, "stack {stacked} vs weak member {weak}");
    assert!(
        stacked < good + 0.01,
        "stack {stacked} vs the true member {good}"
    );
}

#[test]
fn a_saved_weighted_blend_is_checked_field_by_field() {
    let blend = |weights: Vec<f64>, inverse_temperature: f64| {
        FittedBlend::Weighted(WeightedBlend {
            space: Space::Logit,
            weights,
            inverse_temperature,
        })
    };
    // Rounding in the fit's renormalisation is tolerated.
    assert_eq!(blend(vec![0.25, 0.75 + 1e-12], 0.5).check(2), Ok(()));
    // JSON cannot carry NaN (serde_json refuses `null` for a number), but a blend built in
    // code can.
    assert_eq!(
        blend(vec![f64::NAN, 0.5], 1.0).check(2).unwrap_err(),
        "model.weights[0] = NaN: a weight must be finite and non-negative"
    );
    assert_eq!(
        blend(vec![0.5, 0.5], f64::NAN).check(2).unwrap_err(),
        "model.inverse_temperature = NaN: it must be finite and positive"
    );
    assert_eq!(
        blend(vec![0.5, 0.5], 1.0).check(3).unwrap_err(),
        "model.weights has 2 entries for 3 members"
    );
}

mod files {
    use super::*;
    use serde_json::{json, Value};
    use std::path::{Path, PathBuf};

    const HEADER: &str = "id,winner_model_a,winner_model_b,winner_tie\n";

    /// A fresh folder, removed when the value is dropped.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("blend-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn train_ids() -> Vec<String> {
        (1..=30).map(|i| i.to_string()).collect()
    }

    fn labels() -> Vec<Outcome> {
        (0..30).map(|i| Outcome::ALL[(i * 7 + i / 4) % 3]).collect()
    }

    fn rows(ids: &[&str], shift: f64) -> String {
        let mut text = HEADER.to_string();
        for (i, id) in ids.iter().enumerate() {
            let a = 0.2 + 0.5 * ((i as f64 * 0.37 + shift) % 1.0);
            let b = (1.0 - a) * 0.6;
            text.push_str(&format!("{id},{a},{b},{}\n", 1.0 - a - b));
        }
        text
    }

    /// A run folder with OOF rows for `oof_ids`, test rows for `test_ids` and optional folds.
    fn run_folder(
        dir: &Path,
        name: &str,
        oof_ids: &[&str],
        test_ids: &[&str],
        folds: Option<&str>,
    ) -> MemberSource {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("oof.csv"),
            rows(oof_ids, name.len() as f64 * 0.1),
        )
        .unwrap();
        std::fs::write(
            folder.join("submission.csv"),
            rows(test_ids, name.len() as f64 * 0.2),
        )
        .unwrap();
        if let Some(folds) = folds {
            std::fs::write(folder.join("folds.csv"), folds).unwrap();
        }
        MemberSource::run_folder(&folder)
    }

    fn replace_row(path: &Path, id: &str, line: &str) {
        let text: Vec<String> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                if l.split(',').next() == Some(id) {
                    line.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(path, text.join("\n") + "\n").unwrap();
    }

    fn folds_text(shift: usize) -> String {
        let mut text = "id,fold\n".to_string();
        for i in 1..=30 {
            text.push_str(&format!("{i},{}\n", (i + shift) % 3));
        }
        text
    }

    fn load_error(members: &[MemberSource]) -> String {
        MemberSet::load(members, &train_ids())
            .unwrap_err()
            .to_string()
    }

    fn assert_names(message: &str, needles: &[&str]) {
        for needle in needles {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
    }

    #[test]
    fn member_syntax() {
        let folder: MemberSource = "runs/lgbm".parse().unwrap();
        assert_eq!(folder.name, "lgbm");
        assert_eq!(folder.oof, Path::new("runs/lgbm/oof.csv"));
        assert_eq!(folder.submission, Path::new("runs/lgbm/submission.csv"));
        assert_eq!(folder.folds, None, "no folds.csv there");
        let pair: MemberSource = "gemma=extra/g_oof.csv:extra/g_sub.csv".parse().unwrap();
        assert_eq!(
            pair,
            MemberSource {
                name: "gemma".into(),
                oof: "extra/g_oof.csv".into(),
                submission: "extra/g_sub.csv".into(),
                folds: None,
            }
        );
        let triple: MemberSource = "g=o.csv:s.csv:f.csv".parse().unwrap();
        assert_eq!(triple.folds, Some(PathBuf::from("f.csv")));
        for bad in ["=o.csv:s.csv", "g=o.csv", "g=o.csv::f.csv", "g=a:b:c:d"] {
            let message = bad.parse::<MemberSource>().unwrap_err().to_string();
            assert!(message.contains(bad), "{message}");
        }
    }

    #[test]
    fn members_are_aligned_by_id_in_the_first_members_test_order() {
        let folder = temp_dir("align");
        let dir = folder.path();
        let ids = train_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut reversed = ids.clone();
        reversed.reverse();
        let first = run_folder(dir, "lgbm", &ids, &["t3", "t1", "t2"], None);
        let second = run_folder(dir, "deberta", &reversed, &["t1", "t2", "t3"], None);
        let set = MemberSet::load(&[first, second], &train_ids()).unwrap();
        assert_eq!(set.test_ids, ["t3", "t1", "t2"]);
        let deberta_test = Predictions::read(&dir.join("deberta/submission.csv")).unwrap();
        let deberta_oof = Predictions::read(&dir.join("deberta/oof.csv")).unwrap();
        assert_eq!(set.test.row(0)[1], clip_renormalise(deberta_test.probs[2]));
        assert_eq!(set.oof.row(0)[1], clip_renormalise(deberta_oof.probs[29]));
        assert_eq!(set.oof.n_rows(), 30);
    }

    #[test]
    fn mismatched_missing_and_bad_rows_name_member_file_and_id() {
        let folder = temp_dir("mismatch");
        let dir = folder.path();
        let ids = train_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let good = run_folder(dir, "lgbm", &ids, &["t1", "t2"], None);

        let mut unknown = ids.clone();
        unknown[4] = "99";
        let member = run_folder(dir, "unknown", &unknown, &["t1", "t2"], None);
        let message = load_error(&[good.clone(), member]);
        assert_names(
            &message,
            &[
                "member unknown",
                "unknown/oof.csv",
                "id 99 is not among the training ids",
            ],
        );

        let member = run_folder(dir, "missing", &ids[1..], &["t1", "t2"], None);
        let message = load_error(&[good.clone(), member]);
        assert_names(
            &message,
            &[
                "member missing",
                "missing/oof.csv",
                "id 1, one of the training ids",
            ],
        );

        let member = run_folder(dir, "extratest", &ids, &["t1", "t2", "t9"], None);
        let message = load_error(&[good.clone(), member]);
        assert_names(
            &message,
            &[
                "member extratest",
                "extratest/submission.csv",
                "id t9 is not among the test ids of member lgbm",
            ],
        );

        let member = run_folder(dir, "fewertest", &ids, &["t2"], None);
        let message = load_error(&[good.clone(), member]);
        assert_names(
            &message,
            &[
                "member fewertest",
                "fewertest/submission.csv",
                "id t1, one of the test ids",
            ],
        );

        let member = run_folder(dir, "badprob", &ids, &["t1", "t2"], None);
        replace_row(&dir.join("badprob/oof.csv"), "7", "7,0.9,0.9,0.9");
        let message = load_error(&[good.clone(), member]);
        assert_names(
            &message,
            &[
                "member badprob",
                "badprob/oof.csv",
                "id 7: probabilities sum to",
            ],
        );

        let member = run_folder(dir, "nan", &ids, &["t1", "t2"], None);
        let sub = dir.join("nan/submission.csv");
        std::fs::write(&sub, format!("{HEADER}t1,NaN,0.5,0.5\nt2,0.2,0.3,0.5\n")).unwrap();
        let message = load_error(&[good.clone(), member]);
        assert_names(
            &message,
            &["member nan", "nan/submission.csv", "id t1: winner_model_a"],
        );

        let message = load_error(&[good.clone(), good.clone()]);
        assert_names(&message, &["two members are named lgbm"]);
    }

    #[test]
    fn disagreeing_folds_name_member_file_and_id() {
        let folder = temp_dir("folds");
        let dir = folder.path();
        let ids = train_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let first = run_folder(dir, "lgbm", &ids, &["t1"], Some(&folds_text(0)));
        let same = run_folder(dir, "same", &ids, &["t1"], Some(&folds_text(0)));
        let without = run_folder(dir, "without", &ids, &["t1"], None);
        let set = MemberSet::load(&[first.clone(), without, same], &train_ids()).unwrap();
        let shared = set.folds.unwrap();
        assert_eq!(
            (shared.member.as_str(), shared.folds.n_folds()),
            ("lgbm", 3)
        );

        let mut moved = folds_text(0);
        moved = moved.replace("\n3,0\n", "\n3,1\n");
        let other = run_folder(dir, "other", &ids, &["t1"], Some(&moved));
        let message = load_error(&[first.clone(), other]);
        assert_names(
            &message,
            &[
                "member other",
                "other/folds.csv",
                "id 3 is in fold 1, but in fold 0 in member lgbm's",
                "lgbm/folds.csv",
            ],
        );

        let message = load_error(&[
            first.clone(),
            run_folder(dir, "short", &ids, &["t1"], Some("id,fold\n1,0\n2,1\n")),
        ]);
        assert_names(
            &message,
            &[
                "member short",
                "short/folds.csv",
                "training id 3 has no fold",
            ],
        );
    }

    fn request(dir: &Path, members: Vec<MemberSource>, method: Method) -> BlendRequest {
        BlendRequest {
            members,
            method,
            train_ids: train_ids(),
            labels: labels(),
            folds: FoldsChoice {
                n_folds: 3,
                ..FoldsChoice::default()
            },
            out: dir.join("out/submission.csv"),
        }
    }

    #[test]
    fn run_writes_the_submission_and_report_and_checks_the_folds_file() {
        let folder = temp_dir("run");
        let dir = folder.path();
        let ids = train_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let lgbm = run_folder(dir, "lgbm", &ids, &["t2", "t1", "t3"], Some(&folds_text(0)));
        let gemma_oof = dir.join("g_oof.csv");
        let gemma_sub = dir.join("g_sub.csv");
        std::fs::write(&gemma_oof, rows(&ids, 0.55)).unwrap();
        std::fs::write(&gemma_sub, rows(&["t3", "t2", "t1"], 0.1)).unwrap();
        let gemma: MemberSource = format!("gemma={}:{}", gemma_oof.display(), gemma_sub.display())
            .parse()
            .unwrap();

        let mut blend = request(dir, vec![lgbm.clone(), gemma], auto(Space::Probability));
        let report = run(&blend).unwrap();
        let written = Predictions::read(&blend.out).unwrap();
        assert_eq!(written.ids, ["t2", "t1", "t3"]);
        assert!(written
            .probs
            .iter()
            .all(|p| (p.iter().sum::<f64>() - 1.0).abs() < 1e-12));
        let weights: Vec<f64> = report.members.iter().map(|m| m.weight.unwrap()).collect();
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let best = report
            .members
            .iter()
            .map(|m| m.oof_log_loss)
            .fold(f64::INFINITY, f64::min);
        assert!(report.in_sample_log_loss <= best + 1e-12);
        assert_eq!(report.n_folds, 3);
        assert!(
            report.folds_origin.contains("lgbm/folds.csv"),
            "{}",
            report.folds_origin
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("out/blend.json")).unwrap())
                .unwrap();
        assert_eq!(json["members"][1]["name"], "gemma");
        assert_eq!(json["method"], "weighted");
        assert_eq!(json["space"], "probability");
        assert!(json["nested_log_loss"].as_f64().unwrap() > 0.0);
        let table = report.to_string();
        assert_names(
            &table,
            &[
                "lgbm",
                "gemma",
                "blend, in-sample",
                "blend, nested (3 folds)",
                "pooled",
            ],
        );

        // A folds file that disagrees with the members' is refused, naming it and the id.
        let folds_file = dir.join("other_folds.csv");
        std::fs::write(&folds_file, folds_text(1)).unwrap();
        blend.folds.file = Some(folds_file);
        let message = run(&blend).unwrap_err().to_string();
        assert_names(
            &message,
            &[
                "other_folds.csv",
                "id 1 is in fold 2, but in fold 1 in member lgbm's",
            ],
        );
    }

    #[test]
    fn a_one_member_run_writes_that_members_submission() {
        let folder = temp_dir("one");
        let dir = folder.path();
        let ids = train_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let lgbm = run_folder(dir, "lgbm", &ids, &["t2", "t1"], None);
        let report = run(&request(dir, vec![lgbm.clone()], auto(Space::Logit))).unwrap();
        assert_eq!(report.members[0].weight, Some(1.0));
        assert!((report.in_sample_log_loss - report.members[0].oof_log_loss).abs() < 1e-12);
        assert!(report.folds_origin.contains("stratified"));
        let written = Predictions::read(&dir.join("out/submission.csv")).unwrap();
        let original = Predictions::read(&lgbm.submission).unwrap();
        assert_eq!(written.ids, original.ids);
        for (w, o) in written.probs.iter().zip(&original.probs) {
            assert!((0..3).all(|c| (w[c] - o[c]).abs() < 1e-12));
        }
    }

    #[test]
    fn apply_reproduces_the_submission_from_blend_json_without_oof_files() {
        let ids = train_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let methods = [
            ("probability", auto(Space::Probability)),
            (
                "logit-calibrated",
                Method::Weighted {
                    space: Space::Logit,
                    weights: WeightChoice::Auto,
                    calibrate: true,
                },
            ),
            ("stack", Method::Stack),
        ];
        for (name, method) in methods {
            let folder = temp_dir(&format!("apply-{name}"));
            let dir = folder.path();
            let members = vec![
                run_folder(dir, "lgbm", &ids, &["t2", "t1", "t3"], None),
                run_folder(dir, "deberta", &ids, &["t3", "t2", "t1"], None),
            ];
            let blend = request(dir, members.clone(), method);
            run(&blend).unwrap();
            for member in &members {
                std::fs::remove_file(&member.oof).unwrap();
            }
            let applied = dir.join("applied/submission.csv");
            let saved = dir.join("out/blend.json");
            assert_eq!(apply(&saved, &members, &applied).unwrap(), 3);
            assert_eq!(
                Predictions::read(&applied).unwrap(),
                Predictions::read(&blend.out).unwrap(),
                "{name}"
            );

            let reversed: Vec<MemberSource> = members.iter().rev().cloned().collect();
            let message = apply(&saved, &reversed, &applied).unwrap_err().to_string();
            assert_names(
                &message,
                &[
                    "blend.json",
                    r#"fitted on members ["lgbm", "deberta"], in that order"#,
                ],
            );
        }
        let folder = temp_dir("apply-garbled");
        let garbled = folder.path().join("blend.json");
        std::fs::write(
            &garbled,
            "{\"members\": [], \"model\": {\"method\": \"magic\"}}",
        )
        .unwrap();
        let message = apply(&garbled, &[], &garbled.with_extension("csv"))
            .unwrap_err()
            .to_string();
        assert_names(&message, &["blend.json", "line 1", "not a blend.json"]);
    }

    /// `blend.json` of a real fit, as JSON to damage, with its members.
    fn fitted_blend_json(
        name: &str,
        method: Method,
    ) -> (tempfile::TempDir, Vec<MemberSource>, Value) {
        let folder = temp_dir(name);
        let dir = folder.path();
        let ids = train_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let members = vec![
            run_folder(dir, "lgbm", &ids, &["t1", "t2"], None),
            run_folder(dir, "deberta", &ids, &["t2", "t1"], None),
        ];
        run(&request(dir, members.clone(), method)).unwrap();
        let text = std::fs::read_to_string(dir.join("out/blend.json")).unwrap();
        (folder, members, serde_json::from_str(&text).unwrap())
    }

    /// Applies `json` written as `file` in `dir`; the error's message.
    fn apply_error(dir: &Path, file: &str, json: &Value, members: &[MemberSource]) -> String {
        let path = dir.join(file);
        std::fs::write(&path, json.to_string()).unwrap();
        apply(&path, members, &dir.join("applied.csv"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn apply_refuses_a_damaged_blend_json_naming_the_file_and_field() {
        let (folder, members, fitted) =
            fitted_blend_json("damaged-weighted", auto(Space::Probability));
        let dir = folder.path();
        let damaged: [(&str, Value, &str); 6] = [
            (
                "negative.json",
                json!([1.2, -0.2]),
                "model.weights[1] = -0.2: ",
            ),
            ("sum.json", json!([0.5, 0.6]), "model.weights sum to 1.1"),
            (
                "count.json",
                json!([1.0]),
                "model.weights has 1 entries for 2 members",
            ),
            ("nan.json", json!([0.5, null]), "line 1"),
            (
                "zero-temperature.json",
                json!(0.0),
                "model.inverse_temperature = 0: ",
            ),
            (
                "negative-temperature.json",
                json!(-1.0),
                "model.inverse_temperature = -1: ",
            ),
        ];
        for (file, value, field) in damaged {
            let mut json = fitted.clone();
            let key = if file.contains("temperature") {
                "inverse_temperature"
            } else {
                "weights"
            };
            json["model"][key] = value;
            let message = apply_error(dir, file, &json, &members);
            assert_names(&message, &[file, field]);
        }

        let (folder, members, fitted) = fitted_blend_json("damaged-stack", Method::Stack);
        let dir = folder.path();
        let rows = fitted["model"]["coefficients"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 6);
        for n_rows in [5, 7, 9] {
            let mut json = fitted.clone();
            json["model"]["coefficients"] = rows.iter().cycle().take(n_rows).cloned().collect();
            let file = format!("stack-{n_rows}.json");
            let message = apply_error(dir, &file, &json, &members);
            let field = format!("model.coefficients has {n_rows} rows; 2 members need 6");
            assert_names(&message, &[&file, &field]);
        }
    }
}
