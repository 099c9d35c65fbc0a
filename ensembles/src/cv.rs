//! K-fold cross-validation of a LightGBM model on position-swap-augmented rows.
//!
//! Every training row enters twice, as given and with A and B exchanged (label mirrored), and
//! both copies always sit on the same side of a fold. Predictions average the model over both
//! orientations, which makes them exactly mirror-symmetric.
use crate::lgbm::{self, CsrView, Dataset, Model, Rounds};
use crate::{Error, Result};
use ensemble_core::folds::{FoldRows, Folds, StoppingRows};
use ensemble_core::outcome::swap_average;
use ensemble_core::{metrics, Outcome, Probs};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Booster parameters, as in `configs/lgbm.toml`'s `[lgbm]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BoosterParams {
    /// `auto`: chosen by the number of training rows ([`BoosterParams::for_rows`]).
    pub learning_rate: Auto<f64>,
    pub num_leaves: usize,
    pub min_data_in_leaf: usize,
    pub feature_fraction: f64,
    pub bagging_fraction: f64,
    pub bagging_freq: usize,
    pub lambda_l2: f64,
    /// `auto`: chosen by the number of training rows ([`BoosterParams::for_rows`]).
    pub max_bin: Auto<usize>,
    pub max_rounds: usize,
    /// `auto`: chosen by the number of training rows ([`BoosterParams::for_rows`]).
    pub early_stopping_rounds: Auto<usize>,
    /// Models per fold, with seeds `seed`, `seed + 1`, …: their predictions are averaged.
    pub seeds: usize,
    /// Which rows early stopping watches (see [`StoppingRows`]).
    pub early_stopping_on: StoppingRows,
    /// What each fold's final model trains on once its round count is chosen (see
    /// [`Refit`]).
    pub refit: Refit,
    /// 0 uses every core.
    pub num_threads: usize,
    pub seed: u64,
    /// Any other LightGBM parameter, passed through as `key=value`.
    pub extra: BTreeMap<String, String>,
}

impl Default for BoosterParams {
    fn default() -> Self {
        BoosterParams {
            learning_rate: Auto::ByRows,
            num_leaves: 31,
            min_data_in_leaf: 40,
            feature_fraction: 0.5,
            bagging_fraction: 0.5,
            bagging_freq: 1,
            lambda_l2: 1.0,
            max_bin: Auto::ByRows,
            max_rounds: 2000,
            early_stopping_rounds: Auto::ByRows,
            seeds: 1,
            early_stopping_on: StoppingRows::InnerFold,
            refit: Refit::None,
            num_threads: 0,
            seed: 42,
            extra: BTreeMap::new(),
        }
    }
}

/// A setting given by the user, or chosen by the number of training rows (`"auto"` in a
/// config file).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Auto<T> {
    ByRows,
    Set(T),
}

impl<T: Copy> Auto<T> {
    /// The value given, else `chosen`.
    pub fn or(self, chosen: T) -> T {
        match self {
            Auto::ByRows => chosen,
            Auto::Set(value) => value,
        }
    }

    /// The value, once [`BoosterParams::for_rows`] has chosen it (`key` names the setting).
    fn chosen(self, key: &str) -> Result<T> {
        match self {
            Auto::ByRows => Err(Error::Invalid(format!(
                "{key} = \"auto\" was not chosen for the number of rows"
            ))),
            Auto::Set(value) => Ok(value),
        }
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Auto<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auto::ByRows => f.write_str("auto"),
            Auto::Set(value) => value.fmt(f),
        }
    }
}

impl<T: Serialize> Serialize for Auto<T> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Auto::ByRows => serializer.serialize_str("auto"),
            Auto::Set(value) => value.serialize(serializer),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Auto<T> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given<T> {
            Value(T),
            Word(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Value(value) => Ok(Auto::Set(value)),
            Given::Word(word) if word == "auto" => Ok(Auto::ByRows),
            Given::Word(word) => Err(serde::de::Error::custom(format!(
                "`{word}`: expected a number or \"auto\""
            ))),
        }
    }
}

/// From this many training battles, `auto` settings take the fast pace: learning rate 0.2,
/// early stopping after 25 rounds and 31 bins per feature, instead of 0.1, 50 and 63. On
/// 32,026 alpaca-pref battles the fast pace was level on held-out prompts at less than half
/// the boosting time, while on 2,475 battles each of its changes lost (BENCHMARKS.md, "Fast
/// defaults").
pub const FAST_PACE_ROWS: usize = 20_000;

/// Inner-fold early stopping trains each fold model on K−2 folds: the watched fold chooses
/// the round count and is then wasted. A refit trains the fold's final model afresh on the
/// training and watched folds (K−1, still never the held-out one) for the chosen count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refit {
    /// The early-stopped model is the fold's model.
    None,
    /// Refit for the round count early stopping chose.
    SameRounds,
    /// Refit for that count scaled by the ratio of training rows (K−1 over K−2 folds), since
    /// more rows support more rounds at the same learning rate.
    ScaledRounds,
}

impl Refit {
    /// The refit's round count, for `best` rounds chosen on `stopped_rows` training rows and
    /// a refit on `refit_rows`.
    pub fn rounds(self, best: usize, stopped_rows: usize, refit_rows: usize) -> usize {
        match self {
            Refit::None | Refit::SameRounds => best,
            Refit::ScaledRounds => {
                (best as f64 * refit_rows as f64 / stopped_rows.max(1) as f64).round() as usize
            }
        }
    }
}

impl std::str::FromStr for Refit {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Refit, String> {
        match text {
            "none" => Ok(Refit::None),
            "same-rounds" => Ok(Refit::SameRounds),
            "scaled-rounds" => Ok(Refit::ScaledRounds),
            _ => Err(format!(
                "`{text}`: expected none, same-rounds or scaled-rounds"
            )),
        }
    }
}

impl BoosterParams {
    /// These parameters with every `auto` setting chosen for `n_rows` training battles.
    pub fn for_rows(&self, n_rows: usize) -> BoosterParams {
        let fast = n_rows >= FAST_PACE_ROWS;
        let pick = |fast_value, slow_value| if fast { fast_value } else { slow_value };
        BoosterParams {
            learning_rate: Auto::Set(self.learning_rate.or(if fast { 0.2 } else { 0.1 })),
            early_stopping_rounds: Auto::Set(self.early_stopping_rounds.or(pick(25, 50))),
            max_bin: Auto::Set(self.max_bin.or(pick(31, 63))),
            ..self.clone()
        }
    }

    /// The settings that are `auto`, by their config key.
    pub fn auto_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.learning_rate == Auto::ByRows {
            keys.push("learning_rate");
        }
        if self.early_stopping_rounds == Auto::ByRows {
            keys.push("early_stopping_rounds");
        }
        if self.max_bin == Auto::ByRows {
            keys.push("max_bin");
        }
        keys
    }

    /// Checks every setting before anything runs, naming each `[lgbm]` key as
    /// `[lgbm] key`. See [`BoosterParams::validate_naming`].
    pub fn validate(&self) -> Result<()> {
        self.validate_naming(|key| format!("[lgbm] {key}"))
    }

    /// Checks every setting before anything runs; `name(key)` is how the user set the
    /// `[lgbm]` key (a config key, or a command-line flag that overrode it). Values that make
    /// no sense (no rounds, a learning rate of 0, a fraction above 1) are refused here rather
    /// than failing inside LightGBM after the features are computed. `extra` is checked
    /// against LightGBM's own parameter list: an unknown key is an error rather than a setting
    /// LightGBM ignores (its warnings are off), a value with a space or `=` would smuggle in
    /// other parameters, the objective, class count and metric are this tool's to set, and a
    /// parameter an `[lgbm]` key sets cannot be set a second time under another name.
    pub fn validate_naming(&self, name: impl Fn(&str) -> String) -> Result<()> {
        let refuse = |key: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(Error::Invalid(format!("{} = {value}: {why}", name(key))))
        };
        if let Auto::Set(rate) = self.learning_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return refuse("learning_rate", &rate, "must be a finite number above 0");
            }
        }
        for (key, fraction) in [
            ("feature_fraction", self.feature_fraction),
            ("bagging_fraction", self.bagging_fraction),
        ] {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return refuse(key, &fraction, "a fraction must be above 0 and at most 1");
            }
        }
        if !(self.lambda_l2.is_finite() && self.lambda_l2 >= 0.0) {
            return refuse("lambda_l2", &self.lambda_l2, "must be a number, 0 or more");
        }
        for (key, value, least, why) in [
            (
                "num_leaves",
                self.num_leaves,
                2,
                "a tree needs at least 2 leaves",
            ),
            (
                "max_bin",
                self.max_bin.or(2),
                2,
                "a feature needs at least 2 bins",
            ),
            (
                "max_rounds",
                self.max_rounds,
                1,
                "at least 1 boosting round",
            ),
            (
                "early_stopping_rounds",
                self.early_stopping_rounds.or(1),
                1,
                "at least 1 round without improvement before stopping",
            ),
            ("seeds", self.seeds, 1, "at least one model per fold"),
        ] {
            if value < least {
                return refuse(key, &value, why);
            }
        }
        if self.refit != Refit::None && self.early_stopping_on == StoppingRows::HeldOut {
            return Err(Error::Invalid(
                "refit needs early_stopping_on = \"inner-fold\": with \"held-out\" the \
                 watched fold is the one scored, and a refit would train on it"
                    .into(),
            ));
        }
        if self.extra.is_empty() {
            return Ok(());
        }
        let names = lgbm::parameter_names()?;
        for (key, value) in &self.extra {
            let bad = |why: &str| {
                Err(Error::Invalid(format!(
                    "[lgbm.extra] {key} = {value:?}: {why}"
                )))
            };
            let Some(canonical) = names.get(key) else {
                return bad("not a LightGBM parameter");
            };
            if OWN_PARAMETERS.contains(&canonical.as_str()) {
                return bad("set by this tool, not configurable");
            }
            if let Some((own_key, _)) = LGBM_KEYS.iter().find(|(_, p)| p == canonical) {
                return bad(&format!(
                    "the LightGBM parameter {canonical}, which {} sets; set it there only",
                    name(own_key)
                ));
            }
            if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '=') {
                return bad("a value must be one word, without spaces or '='");
            }
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        match self.num_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Parameters of the binned dataset; `max_bin` must have been chosen
    /// ([`BoosterParams::for_rows`]).
    pub fn dataset_params(&self) -> Result<String> {
        Ok(format!(
            "verbosity=-1 max_bin={} num_threads={} seed={}",
            self.max_bin.chosen("max_bin")?,
            self.threads(),
            self.seed
        ))
    }

    /// Parameters of the booster, LightGBM's `key=value` form; `auto` settings must have been
    /// chosen ([`BoosterParams::for_rows`]).
    pub fn booster_params(&self) -> Result<String> {
        let mut text = format!(
            "objective=multiclass num_class=3 metric=multi_logloss verbosity=-1 \
             deterministic=true learning_rate={} num_leaves={} \
             min_data_in_leaf={} feature_fraction={} bagging_fraction={} bagging_freq={} \
             lambda_l2={} max_bin={} num_threads={} seed={}",
            self.learning_rate.chosen("learning_rate")?,
            self.num_leaves,
            self.min_data_in_leaf,
            self.feature_fraction,
            self.bagging_fraction,
            self.bagging_freq,
            self.lambda_l2,
            self.max_bin.chosen("max_bin")?,
            self.threads(),
            self.seed
        );
        // LightGBM picks row- or column-wise histograms by timing one construction. That misses
        // the cost of a column sample: row-wise, the multi-value bin of the sparse TF-IDF
        // columns is copied for every tree's sampled columns, half of a default run on
        // alpaca-pref; column-wise skips the unsampled columns and grows the same trees
        // (BENCHMARKS.md "Column-wise histograms under a column sample"). Neither flag has an
        // alias, so a user's own choice in `extra` is found by these names.
        let user_chose = ["force_col_wise", "force_row_wise"]
            .iter()
            .any(|key| self.extra.contains_key(*key));
        if self.feature_fraction < 1.0 && !user_chose {
            text.push_str(" force_col_wise=true");
        }
        for (key, value) in &self.extra {
            text.push_str(&format!(" {key}={value}"));
        }
        Ok(text)
    }
}

/// Parameters that `booster_params` sets itself, the task's (aliases resolve to them).
const OWN_PARAMETERS: [&str; 3] = ["objective", "num_class", "metric"];

/// Each `[lgbm]` key that sets a LightGBM parameter, and that parameter's canonical name:
/// the ones `booster_params` and `dataset_params` pass, and the round counts `lgbm::train`
/// applies itself.
const LGBM_KEYS: [(&str, &str); 12] = [
    ("learning_rate", "learning_rate"),
    ("num_leaves", "num_leaves"),
    ("min_data_in_leaf", "min_data_in_leaf"),
    ("feature_fraction", "feature_fraction"),
    ("bagging_fraction", "bagging_fraction"),
    ("bagging_freq", "bagging_freq"),
    ("lambda_l2", "lambda_l2"),
    ("max_bin", "max_bin"),
    ("num_threads", "num_threads"),
    ("seed", "seed"),
    ("max_rounds", "num_iterations"),
    ("early_stopping_rounds", "early_stopping_round"),
];

/// The matrices a CV run needs, all with the same columns.
pub struct CvInputs<'a> {
    /// 2N rows: the N training rows as given, then the same N rows swapped.
    pub train: CsrView<'a>,
    pub labels: &'a [Outcome],
    pub test_as_given: CsrView<'a>,
    pub test_swapped: CsrView<'a>,
}

/// What the CV reports as it goes.
pub enum Progress {
    FoldStarted {
        fold: usize,
        n_folds: usize,
    },
    Round {
        fold: usize,
        round: usize,
        valid_loss: f64,
    },
    FoldFinished(FoldReport),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoldReport {
    pub fold: usize,
    pub train_rows: usize,
    pub held_out_rows: usize,
    /// The fold whose rows early stopping watched (this fold itself with `held-out`).
    pub stopping_fold: usize,
    /// Per seed: the log loss of the watched rows at the model's best round.
    pub stopping_log_losses: Vec<f64>,
    /// Per seed: the best round on the watched rows.
    pub best_iterations: Vec<usize>,
    /// Per seed, with a refit: the rounds of the refitted model, the one kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refit_rounds: Vec<usize>,
    pub log_loss: f64,
    pub accuracy: f64,
    pub seconds: f64,
}

pub struct CvOutput {
    /// Out-of-fold probabilities, one per training row.
    pub oof: Vec<Probs>,
    /// Test probabilities averaged over the fold models.
    pub test: Vec<Probs>,
    pub folds: Vec<FoldReport>,
    /// Per fold: gain and split counts per feature, averaged over its seeds' models.
    pub importance: Vec<FoldImportance>,
    /// Per fold, per seed: the model in LightGBM's text format.
    pub models: Vec<Vec<String>>,
    pub seconds: CvTimings,
}

/// Where a cross-validation's time went.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CvTimings {
    /// Binning the augmented training rows into LightGBM's dataset, once for all folds.
    pub binning: f64,
    /// Training every fold's models (refits included) and predicting its held-out rows.
    pub folds: f64,
    /// Predicting the test rows with every fold model.
    pub test_prediction: f64,
}

/// Gain and split counts per feature of one fold's models (their mean over seeds).
#[derive(Clone, Debug, PartialEq)]
pub struct FoldImportance {
    pub gain: Vec<f64>,
    pub split: Vec<f64>,
}

/// Probabilities averaged over both orientations, given each orientation's flat predictions.
fn swap_averaged(as_given: &[f64], swapped: &[f64]) -> Vec<Probs> {
    as_given
        .chunks_exact(3)
        .zip(swapped.chunks_exact(3))
        .map(|(p, q)| swap_average([p[0], p[1], p[2]], [q[0], q[1], q[2]]))
        .collect()
}

/// Rows of the augmented matrix for the given training rows: each row and its swapped copy.
fn augmented_rows(rows: &[usize], n: usize) -> Vec<usize> {
    rows.iter()
        .copied()
        .chain(rows.iter().map(|&r| r + n))
        .collect()
}

pub fn cross_validate(
    inputs: &CvInputs<'_>,
    folds: &Folds,
    params: &BoosterParams,
    mut progress: impl FnMut(Progress),
) -> Result<CvOutput> {
    let n = inputs.labels.len();
    let params = &params.for_rows(n);
    let binning = Instant::now();
    let full = augmented_dataset(inputs, params)?;
    let mut seconds = CvTimings {
        binning: binning.elapsed().as_secs_f64(),
        ..CvTimings::default()
    };
    let folds_started = Instant::now();
    let mut oof = vec![[f64::NAN; 3]; n];
    let (mut reports, mut models, mut importance) = (Vec::new(), Vec::new(), Vec::new());
    let n_folds = folds.n_folds();
    for fold in 0..n_folds {
        let started = Instant::now();
        progress(Progress::FoldStarted { fold, n_folds });
        let rows = folds.rows_for(fold, params.early_stopping_on)?;
        let fit = fit_fold(&full, inputs, &rows, params, |round, loss| {
            progress(Progress::Round {
                fold,
                round,
                valid_loss: loss,
            })
        })
        .map_err(|e| match e {
            Error::LightGbm(message) => Error::LightGbm(format!("fold {fold}: {message}")),
            other => other,
        })?;
        for (&row, p) in rows.held_out.iter().zip(&fit.held_out) {
            oof[row] = *p;
        }
        let fold_labels: Vec<Outcome> = rows.held_out.iter().map(|&r| inputs.labels[r]).collect();
        let report = FoldReport {
            fold,
            train_rows: fit.train_rows,
            held_out_rows: rows.held_out.len(),
            stopping_fold: rows.stopping_fold,
            stopping_log_losses: fit.stopping_log_losses,
            best_iterations: fit.best_iterations,
            refit_rounds: fit.refit_rounds,
            log_loss: metrics::log_loss(&fold_labels, &fit.held_out),
            accuracy: metrics::accuracy(&fold_labels, &fit.held_out),
            seconds: started.elapsed().as_secs_f64(),
        };
        progress(Progress::FoldFinished(report.clone()));
        reports.push(report);
        importance.push(fit.importance);
        models.push(fit.models);
    }
    seconds.folds = folds_started.elapsed().as_secs_f64();
    let test_started = Instant::now();
    let texts = models
        .iter()
        .map(|seeds| seeds.iter().map(|m| m.as_text().to_owned()).collect())
        .collect();
    let all_models: Vec<Model> = models.into_iter().flatten().collect();
    let test = predict_mean(
        &all_models,
        inputs.test_as_given,
        inputs.test_swapped,
        params.threads(),
    )?;
    seconds.test_prediction = test_started.elapsed().as_secs_f64();
    Ok(CvOutput {
        oof,
        test,
        folds: reports,
        importance,
        models: texts,
        seconds,
    })
}

/// LightGBM's binned dataset of the 2N augmented training rows (each fold trains on a subset
/// of it), labelled with each row's outcome and each swapped copy's mirrored outcome.
pub(crate) fn augmented_dataset(inputs: &CvInputs<'_>, params: &BoosterParams) -> Result<Dataset> {
    let n = inputs.labels.len();
    if inputs.train.n_rows() != 2 * n {
        return Err(Error::Invalid(format!(
            "the augmented matrix has {} rows for {n} labels; expected {}",
            inputs.train.n_rows(),
            2 * n
        )));
    }
    let labels: Vec<f32> = inputs
        .labels
        .iter()
        .map(|l| l.index() as f32)
        .chain(inputs.labels.iter().map(|l| l.swapped().index() as f32))
        .collect();
    Dataset::from_csr(inputs.train, &labels, &params.dataset_params()?)
}

/// One fold's models and what they say about its held-out rows.
pub(crate) struct FoldFit {
    /// One model per seed.
    pub models: Vec<Model>,
    /// The held-out rows' probabilities: each model swap-averaged, then the models' mean.
    pub held_out: Vec<Probs>,
    pub best_iterations: Vec<usize>,
    /// Empty without a refit.
    pub refit_rounds: Vec<usize>,
    /// The battles the kept models trained on.
    pub train_rows: usize,
    pub stopping_log_losses: Vec<f64>,
    pub importance: FoldImportance,
}

/// Trains `params.seeds` models (seeds `seed`, `seed + 1`, …) on `rows.train`, each
/// early-stopped on `rows.stopping` (and, with a [`Refit`], trained again on both for the
/// rounds chosen), and predicts `rows.held_out` with their mean. Rows index the N training
/// battles; `full` is [`augmented_dataset`] of `inputs`.
pub(crate) fn fit_fold(
    full: &Dataset,
    inputs: &CvInputs<'_>,
    rows: &FoldRows,
    params: &BoosterParams,
    mut on_round: impl FnMut(usize, f64),
) -> Result<FoldFit> {
    let n = inputs.labels.len();
    let n_features = inputs.train.n_cols;
    // Subsets too are given the thread count: LightGBM takes all cores when it is unset.
    let threads = format!("num_threads={}", params.threads());
    let train_set = full.subset(&augmented_rows(&rows.train, n), &threads)?;
    let valid_set = full.subset(&augmented_rows(&rows.stopping, n), &threads)?;
    let refit_set = match params.refit {
        Refit::None => None,
        _ => {
            let mut both = [rows.train.as_slice(), &rows.stopping].concat();
            both.sort_unstable();
            Some((
                full.subset(&augmented_rows(&both, n), &threads)?,
                both.len(),
            ))
        }
    };
    let rounds = Rounds {
        max: params.max_rounds,
        early_stopping: params
            .early_stopping_rounds
            .chosen("early_stopping_rounds")?,
    };
    let held_out_swapped: Vec<usize> = rows.held_out.iter().map(|&r| r + n).collect();
    let (as_given, swapped) = (
        inputs.train.select_rows(&rows.held_out),
        inputs.train.select_rows(&held_out_swapped),
    );
    let mut fit = FoldFit {
        models: Vec::new(),
        held_out: vec![[0.0; 3]; rows.held_out.len()],
        best_iterations: Vec::new(),
        refit_rounds: Vec::new(),
        train_rows: refit_set
            .as_ref()
            .map_or(rows.train.len(), |(_, rows)| *rows),
        stopping_log_losses: Vec::new(),
        importance: FoldImportance {
            gain: vec![0.0; n_features],
            split: vec![0.0; n_features],
        },
    };
    let seeds = params.seeds.max(1);
    for offset in 0..seeds {
        let seeded = BoosterParams {
            seed: params.seed.wrapping_add(offset as u64),
            ..params.clone()
        };
        let trained = lgbm::train(
            &train_set,
            &valid_set,
            &seeded.booster_params()?,
            rounds,
            &mut on_round,
        )?;
        let model = match &refit_set {
            None => trained.model,
            Some((refit_set, refit_rows)) => {
                let rounds =
                    params
                        .refit
                        .rounds(trained.best_iteration, rows.train.len(), *refit_rows);
                fit.refit_rounds.push(rounds);
                lgbm::train_rounds(refit_set, &seeded.booster_params()?, rounds)?
            }
        };
        let (gain, split) = model.importance()?;
        if gain.len() != n_features {
            return Err(Error::LightGbm(format!(
                "the model has {} features, the data {n_features}",
                gain.len()
            )));
        }
        for j in 0..n_features {
            fit.importance.gain[j] += gain[j] / seeds as f64;
            fit.importance.split[j] += split[j] / seeds as f64;
        }
        let probs = swap_averaged(
            &model.predict(as_given.view(), &threads)?,
            &model.predict(swapped.view(), &threads)?,
        );
        for (mean, p) in fit.held_out.iter_mut().zip(&probs) {
            for k in 0..3 {
                mean[k] += p[k] / seeds as f64;
            }
        }
        fit.best_iterations.push(trained.best_iteration);
        fit.stopping_log_losses.push(trained.best_valid_metric);
        fit.models.push(model);
    }
    Ok(fit)
}

/// Probabilities for rows given in both orientations (`swapped` holds the same rows with A
/// and B exchanged): each model's swap-averaged prediction, then their mean. The CV predicts
/// its test rows with this, and `ensemble predict` with the models a run saved, so both give
/// the same numbers.
pub fn predict_mean(
    models: &[Model],
    as_given: CsrView<'_>,
    swapped: CsrView<'_>,
    threads: usize,
) -> Result<Vec<Probs>> {
    if as_given.n_rows() != swapped.n_rows() {
        return Err(Error::Invalid(format!(
            "{} rows as given but {} swapped",
            as_given.n_rows(),
            swapped.n_rows()
        )));
    }
    let params = format!("num_threads={threads}");
    let mut mean = vec![[0.0; 3]; as_given.n_rows()];
    for model in models {
        if model.n_classes() != 3 {
            return Err(Error::Invalid(format!(
                "a model with {} classes; these predictions need 3 (A, B, tie)",
                model.n_classes()
            )));
        }
        let probs = swap_averaged(
            &model.predict(as_given, &params)?,
            &model.predict(swapped, &params)?,
        );
        for (sum, p) in mean.iter_mut().zip(&probs) {
            for k in 0..3 {
                sum[k] += p[k] / models.len() as f64;
            }
        }
    }
    Ok(mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lgbm::CsrOwned;
    use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

    /// Rows with columns [a_len, b_len, a_len − b_len]; the longer answer tends to win.
    fn battles(n: usize, seed: usize) -> (Vec<[f32; 2]>, Vec<Outcome>) {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let a = ((i * 7919 + seed) % 97) as f32;
            let b = ((i * 104_729 + 3 * seed) % 89) as f32;
            let noise = (i * 31 + seed) % 10;
            let label = match (a - b, noise) {
                (_, 0) => Outcome::Tie,
                (d, _) if d > 5.0 => Outcome::A,
                (d, _) if d < -5.0 => Outcome::B,
                _ => Outcome::Tie,
            };
            rows.push([a, b]);
            labels.push(label);
        }
        (rows, labels)
    }

    fn matrix(rows: &[[f32; 2]], swapped: bool) -> CsrOwned {
        let mut csr = CsrOwned {
            indptr: vec![0],
            n_cols: 3,
            ..Default::default()
        };
        for &[a, b] in rows {
            let (a, b) = if swapped { (b, a) } else { (a, b) };
            for (col, value) in [a, b, a - b].into_iter().enumerate() {
                if value != 0.0 {
                    csr.indices.push(col as i32);
                    csr.values.push(value);
                }
            }
            csr.indptr.push(csr.indices.len() as i64);
        }
        csr
    }

    fn augmented(rows: &[[f32; 2]]) -> CsrOwned {
        let (given, swapped) = (matrix(rows, false), matrix(rows, true));
        let offset = *given.indptr.last().unwrap();
        CsrOwned {
            indptr: given
                .indptr
                .iter()
                .copied()
                .chain(swapped.indptr[1..].iter().map(|p| p + offset))
                .collect(),
            indices: [given.indices, swapped.indices].concat(),
            values: [given.values, swapped.values].concat(),
            n_cols: 3,
        }
    }

    fn params() -> BoosterParams {
        BoosterParams {
            num_threads: 1,
            max_rounds: 200,
            min_data_in_leaf: 10,
            ..Default::default()
        }
    }

    #[test]
    fn settings_that_make_no_sense_are_refused_naming_the_key() {
        type Edit = fn(&mut BoosterParams);
        let cases: [(Edit, &str); 12] = [
            (|p| p.max_rounds = 0, "[lgbm] max_rounds = 0: at least 1"),
            (
                |p| p.learning_rate = Auto::Set(0.0),
                "[lgbm] learning_rate = 0: must be a finite",
            ),
            (
                |p| p.learning_rate = Auto::Set(-0.1),
                "[lgbm] learning_rate = -0.1",
            ),
            (
                |p| p.learning_rate = Auto::Set(f64::NAN),
                "[lgbm] learning_rate = NaN",
            ),
            (
                |p| p.learning_rate = Auto::Set(f64::INFINITY),
                "[lgbm] learning_rate = inf",
            ),
            (|p| p.num_leaves = 1, "[lgbm] num_leaves = 1: a tree needs"),
            (
                |p| p.feature_fraction = 1.5,
                "[lgbm] feature_fraction = 1.5",
            ),
            (
                |p| p.bagging_fraction = 0.0,
                "[lgbm] bagging_fraction = 0: a fraction",
            ),
            (|p| p.lambda_l2 = -1.0, "[lgbm] lambda_l2 = -1"),
            (|p| p.max_bin = Auto::Set(1), "[lgbm] max_bin = 1"),
            (
                |p| p.early_stopping_rounds = Auto::Set(0),
                "[lgbm] early_stopping_rounds = 0",
            ),
            (|p| p.seeds = 0, "[lgbm] seeds = 0: at least one model"),
        ];
        for (edit, needle) in cases {
            let mut params = BoosterParams::default();
            edit(&mut params);
            let message = params.validate().unwrap_err().to_string();
            assert!(message.starts_with(needle), "{message:?} vs {needle:?}");
        }
        // The edges of what is allowed.
        let edges = BoosterParams {
            num_leaves: 2,
            max_bin: Auto::Set(2),
            feature_fraction: 1.0,
            bagging_fraction: 1.0,
            lambda_l2: 0.0,
            max_rounds: 1,
            early_stopping_rounds: Auto::Set(1),
            ..Default::default()
        };
        edges.validate().unwrap();
        // A flag that overrode the key is named as the user gave it.
        let params = BoosterParams {
            max_rounds: 0,
            ..Default::default()
        };
        let message = params
            .validate_naming(|key| match key {
                "max_rounds" => "--max-rounds".into(),
                other => format!("[lgbm] {other}"),
            })
            .unwrap_err()
            .to_string();
        assert_eq!(message, "--max-rounds = 0: at least 1 boosting round");
    }

    #[test]
    fn extra_parameters_cannot_set_what_an_lgbm_key_sets() {
        for (alias, own_key) in [
            ("learning_rate", "learning_rate"),
            ("eta", "learning_rate"),
            ("shrinkage_rate", "learning_rate"),
            ("num_leaf", "num_leaves"),
            ("bagging", "bagging_fraction"),
            ("sub_row", "bagging_fraction"),
            ("colsample_bytree", "feature_fraction"),
            ("reg_lambda", "lambda_l2"),
            ("min_child_samples", "min_data_in_leaf"),
            ("random_seed", "seed"),
            ("n_jobs", "num_threads"),
            ("n_estimators", "max_rounds"),
            ("early_stopping_rounds", "early_stopping_rounds"),
        ] {
            let params = BoosterParams {
                extra: BTreeMap::from([(alias.to_owned(), "1".to_owned())]),
                ..Default::default()
            };
            let message = params.validate().unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("[lgbm.extra] {alias} = \"1\": ")),
                "{message}"
            );
            assert!(
                message.contains(&format!("which [lgbm] {own_key} sets")),
                "{message}"
            );
        }
        // The table's names are LightGBM's canonical ones, and other parameters still pass.
        let names = lgbm::parameter_names().unwrap();
        for (_, parameter) in LGBM_KEYS {
            assert_eq!(names.get(parameter).map(String::as_str), Some(parameter));
        }
        let params = BoosterParams {
            extra: BTreeMap::from([("lambda_l1".to_owned(), "0.5".to_owned())]),
            ..Default::default()
        };
        params.validate().unwrap();
    }

    #[test]
    fn a_column_sample_builds_histograms_column_wise_unless_the_user_chose() {
        let has = |params: &BoosterParams, word: &str| {
            let text = params.for_rows(1000).booster_params().unwrap();
            text.split_whitespace().any(|w| w == word)
        };
        assert!(has(&BoosterParams::default(), "force_col_wise=true"));
        let all_columns = BoosterParams {
            feature_fraction: 1.0,
            ..Default::default()
        };
        assert!(!has(&all_columns, "force_col_wise=true"));
        for (key, value) in [("force_row_wise", "true"), ("force_col_wise", "false")] {
            let chosen = BoosterParams {
                extra: BTreeMap::from([(key.to_owned(), value.to_owned())]),
                ..Default::default()
            };
            chosen.validate().unwrap();
            assert!(!has(&chosen, "force_col_wise=true"));
            assert!(has(&chosen, &format!("{key}={value}")));
        }
        // The user's choice is found by these two names alone: LightGBM knows no alias of them.
        let names = lgbm::parameter_names().unwrap();
        for (alias, parameter) in &names {
            if parameter == "force_col_wise" || parameter == "force_row_wise" {
                assert_eq!(alias, parameter);
            }
        }
    }

    #[test]
    fn swapped_copies_stay_on_their_rows_side_of_every_fold() {
        let n = 50;
        let labels: Vec<Outcome> = (0..n).map(|i| Outcome::ALL[i % 3]).collect();
        let folds = Folds::stratified(&labels, 5, 3).unwrap();
        for fold in 0..5 {
            let (train, held_out) = folds.split(fold);
            let train_aug = augmented_rows(&train, n);
            let held_aug = augmented_rows(&held_out, n);
            assert_eq!(train_aug.len() + held_aug.len(), 2 * n);
            for row in &held_aug {
                assert!(!train_aug.contains(row));
                assert!(
                    !train_aug.iter().any(|t| t % n == row % n),
                    "row {} leaks",
                    row % n
                );
            }
        }
    }

    /// A leakage canary: with labels that carry no signal, an honest OOF score cannot beat
    /// the class prior (the best constant for these very labels). Early stopping on the
    /// held-out fold, which peeks at the labels it is scored on, does beat it: the canary
    /// fires on the one leak this protocol has. Averaged over six label shuffles (per shuffle
    /// the honest protocols scored +0.0007 to +0.0235 above the prior, peeking −0.0014 to
    /// −0.0115), so that chance moves the mean far less than the 0.002 margin.
    #[test]
    fn shuffled_labels_give_no_oof_score_below_the_prior_unless_stopping_peeks() {
        let n = 300;
        let (rows, labels) = battles(n, 3);
        let train = augmented(&rows);
        let none = CsrOwned {
            indptr: vec![0],
            n_cols: 3,
            ..Default::default()
        };
        let protocols = [
            params(),
            BoosterParams {
                refit: Refit::ScaledRounds,
                ..params()
            },
            BoosterParams {
                early_stopping_on: StoppingRows::HeldOut,
                ..params()
            },
        ];
        let shuffles = [9, 10, 11, 12, 13, 14];
        let mut mean_gap = [0.0; 3];
        for shuffle in shuffles {
            let mut shuffled = labels.clone();
            shuffled.shuffle(&mut StdRng::seed_from_u64(shuffle));
            let folds = Folds::stratified(&shuffled, 10, 1).unwrap();
            let inputs = CvInputs {
                train: train.view(),
                labels: &shuffled,
                test_as_given: none.view(),
                test_swapped: none.view(),
            };
            let prior = metrics::log_loss(&shuffled, &vec![metrics::class_prior(&shuffled); n]);
            for (gap, params) in mean_gap.iter_mut().zip(&protocols) {
                let out = cross_validate(&inputs, &folds, params, |_| {}).unwrap();
                *gap += (metrics::log_loss(&shuffled, &out.oof) - prior) / shuffles.len() as f64;
            }
        }
        let [inner_fold, refit, held_out] = mean_gap;
        assert!(
            inner_fold > -0.002 && refit > -0.002 && held_out < -0.002,
            "mean OOF - prior: {inner_fold:+.5} (inner fold), {refit:+.5} (refit), \
             {held_out:+.5} (held out)"
        );
    }

    #[test]
    fn auto_settings_are_chosen_by_rows_and_given_ones_kept() {
        let auto = BoosterParams::default();
        assert_eq!(
            auto.auto_keys(),
            ["learning_rate", "early_stopping_rounds", "max_bin"]
        );
        let small = auto.for_rows(FAST_PACE_ROWS - 1);
        assert_eq!(
            (
                small.learning_rate,
                small.early_stopping_rounds,
                small.max_bin
            ),
            (Auto::Set(0.1), Auto::Set(50), Auto::Set(63))
        );
        let large = auto.for_rows(FAST_PACE_ROWS);
        assert_eq!(
            (
                large.learning_rate,
                large.early_stopping_rounds,
                large.max_bin
            ),
            (Auto::Set(0.2), Auto::Set(25), Auto::Set(31))
        );
        assert!(large.auto_keys().is_empty());
        let given = BoosterParams {
            learning_rate: Auto::Set(0.05),
            ..BoosterParams::default()
        }
        .for_rows(100_000);
        assert_eq!(
            (given.learning_rate, given.early_stopping_rounds),
            (Auto::Set(0.05), Auto::Set(25))
        );
        // In a config: a number or "auto", and nothing else.
        #[derive(Deserialize, Serialize)]
        struct Table {
            rate: Auto<f64>,
        }
        let read = |text: &str| serde_json::from_str::<Table>(text).map(|t| t.rate);
        assert_eq!(read(r#"{"rate": "auto"}"#).unwrap(), Auto::ByRows);
        assert_eq!(read(r#"{"rate": 0.3}"#).unwrap(), Auto::Set(0.3));
        let error = read(r#"{"rate": "fast"}"#).unwrap_err().to_string();
        assert!(
            error.contains("`fast`: expected a number or \"auto\""),
            "{error}"
        );
        let written = serde_json::to_string(&Table { rate: Auto::ByRows }).unwrap();
        assert_eq!(written, r#"{"rate":"auto"}"#);
        // booster_params refuses an unchosen setting rather than passing "auto" on.
        assert!(auto.booster_params().is_err());
        assert!(large
            .booster_params()
            .unwrap()
            .contains("learning_rate=0.2 "));
    }

    #[test]
    fn refit_rounds_scale_with_the_training_rows() {
        assert_eq!(Refit::SameRounds.rounds(100, 800, 900), 100);
        assert_eq!(Refit::ScaledRounds.rounds(100, 800, 900), 113);
        assert_eq!(Refit::ScaledRounds.rounds(40, 600, 600), 40);
        assert_eq!("scaled-rounds".parse(), Ok(Refit::ScaledRounds));
        assert!("scaled".parse::<Refit>().is_err());
        let peeking = BoosterParams {
            refit: Refit::SameRounds,
            early_stopping_on: StoppingRows::HeldOut,
            ..params()
        };
        let error = peeking.validate().unwrap_err().to_string();
        assert!(error.contains("inner-fold"), "{error}");
    }

    /// A refit trains on the training and watched folds for the chosen rounds, and never on
    /// the held-out fold: relabelling that fold leaves its predictions unchanged, bit for bit.
    #[test]
    fn refit_trains_on_k_minus_one_folds_and_never_on_the_held_out_one() {
        let (rows, labels) = battles(400, 5);
        let train = augmented(&rows);
        let none = CsrOwned {
            indptr: vec![0],
            n_cols: 3,
            ..Default::default()
        };
        let folds = Folds::stratified(&labels, 4, 2).unwrap();
        let run = |labels: &[Outcome], refit: Refit| {
            let inputs = CvInputs {
                train: train.view(),
                labels,
                test_as_given: none.view(),
                test_swapped: none.view(),
            };
            let params = BoosterParams { refit, ..params() };
            cross_validate(&inputs, &folds, &params, |_| {}).unwrap()
        };
        for refit in [Refit::SameRounds, Refit::ScaledRounds] {
            let out = run(&labels, refit);
            for (report, models) in out.folds.iter().zip(&out.models) {
                let stopping = folds
                    .rows_for(report.fold, StoppingRows::InnerFold)
                    .unwrap();
                let refit_rows = stopping.train.len() + stopping.stopping.len();
                assert_eq!(report.train_rows, refit_rows);
                let expected =
                    refit.rounds(report.best_iterations[0], stopping.train.len(), refit_rows);
                assert_eq!(report.refit_rounds, [expected]);
                // The kept model has exactly that many rounds of three trees.
                assert_eq!(models[0].matches("\nTree=").count(), 3 * expected);
            }
            let mut relabelled = labels.clone();
            let held_out = folds.split(0).1;
            for &row in &held_out {
                relabelled[row] = relabelled[row].swapped();
            }
            let again = run(&relabelled, refit);
            for &row in &held_out {
                assert_eq!(again.oof[row], out.oof[row]);
            }
            assert_ne!(again.oof, out.oof, "the other folds trained on fold 0");
        }
    }

    #[test]
    fn cross_validation_fills_every_oof_row_and_predicts_mirror_symmetric() {
        let (rows, labels) = battles(600, 1);
        let (test_rows, _) = battles(40, 2);
        let train = augmented(&rows);
        let (test_given, test_swapped) = (matrix(&test_rows, false), matrix(&test_rows, true));
        let folds = Folds::stratified(&labels, 3, 7).unwrap();
        let inputs = CvInputs {
            train: train.view(),
            labels: &labels,
            test_as_given: test_given.view(),
            test_swapped: test_swapped.view(),
        };
        let mut finished = 0;
        let out = cross_validate(&inputs, &folds, &params(), |event| {
            if let Progress::FoldFinished(_) = event {
                finished += 1;
            }
        })
        .unwrap();
        assert_eq!(finished, 3);
        assert_eq!(out.models.len(), 3);
        assert!(out.models.iter().all(|seeds| seeds.len() == 1));
        for p in out.oof.iter().chain(&out.test) {
            assert!(p.iter().all(|v| v.is_finite() && *v > 0.0));
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let loss = metrics::log_loss(&labels, &out.oof);
        assert!(
            loss < 0.8 * metrics::log_loss(&labels, &vec![metrics::class_prior(&labels); 600]),
            "{loss}"
        );
        // Feeding the test rows swapped must swap the first two probabilities exactly.
        let mirrored_inputs = CvInputs {
            test_as_given: test_swapped.view(),
            test_swapped: test_given.view(),
            ..inputs
        };
        let mirrored = cross_validate(&mirrored_inputs, &folds, &params(), |_| {}).unwrap();
        for (p, q) in out.test.iter().zip(&mirrored.test) {
            assert_eq!(*p, ensemble_core::outcome::swap_probs(*q));
        }
        assert_eq!(out.oof, mirrored.oof, "training is deterministic");
        assert!(
            out.importance.iter().all(|fold| fold.gain[2] > 0.0),
            "every fold uses the difference column"
        );
    }
}
