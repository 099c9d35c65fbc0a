//! The command line: every flag explained, every default stated.
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ensemble",
    version = version_line(),
    about = "Predicts which of two chatbot answers a person prefers (Chatbot Arena battles).",
    long_about = "Predicts which of two chatbot answers a person prefers, from Kaggle's \
        Chatbot Arena files (train.csv: id, prompt, response_a, response_b, winner_model_a, \
        winner_model_b, winner_tie; test.csv: id, prompt, response_a, response_b).\n\n\
        Typical use:\n  \
        ensemble cv --folds 10 --train train.csv --test test.csv --out runs/lgbm\n  \
        ensemble importance --run runs/lgbm\n\n\
        With no --train, `ensemble cv` runs on a small generated example."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The version and what this build holds: `cpu`, `cpu, feature model only` or, for the CUDA build,
/// the CUDA API and the GPU architectures of its kernels (set by scripts/build_cuda.sh), so
/// that a user can tell which wheel is installed.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        let build = if cfg!(feature = "cuda") {
            format!(
                "cuda: {}",
                option_env!("ENSEMBLE_CUDA_BUILD").unwrap_or("built without scripts/build_cuda.sh")
            )
        } else if cfg!(feature = "transformer") {
            "cpu".into()
        } else {
            "cpu, feature model only".into()
        };
        format!("{} ({build})", env!("CARGO_PKG_VERSION"))
    })
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Cross-validates the feature model (features + LightGBM) and writes OOF and test predictions.
    Cv(CvArgs),
    /// Predicts a new test file with a saved `cv` run: its fitted feature state and fold
    /// models, averaged as `cv` averages them (same numbers for the same test file).
    Predict(PredictArgs),
    /// Searches LightGBM's main parameters (seeded random search) with nested CV and writes
    /// the winner as a config for `ensemble cv --config`.
    #[command(long_about = TUNE_ABOUT)]
    Tune(TuneArgs),
    /// Prints a run's feature importance table.
    Importance(ImportanceArgs),
    /// Compares `cv` runs made on the same folds: per-fold log-loss differences against a
    /// base run, their standard error, and whether a change beats fold-to-fold noise.
    #[command(long_about = COMPARE_ABOUT)]
    Compare(CompareArgs),
    /// Fine-tunes a DeBERTa model, or LoRA adapters on a decoder LLM (Gemma-2, Qwen2, Llama),
    /// per fold (candle, CPU or CUDA) and writes OOF and test predictions with A/B swap
    /// averaging.
    #[cfg(feature = "transformer")]
    Transformer(TransformerArgs),
    /// Writes the generated example data set (train.csv, test.csv) to a folder.
    Example(ExampleArgs),
    /// Blends members' OOF and test predictions into one submission, with weights fitted on
    /// the OOF predictions and a nested (refitted per fold) estimate of the blend's loss.
    #[command(long_about = BLEND_ABOUT)]
    Blend(BlendArgs),
}

const BLEND_ABOUT: &str = "Blends members' OOF and test predictions into one submission.\n\n\
    Each member brings out-of-fold predictions for every training id and predictions for every \
    test id, in the submission's columns (id,winner_model_a,winner_model_b,winner_tie). All \
    members are checked against the training labels and each other (ids, probabilities, folds) \
    before anything is fitted.\n\n\
    Writes the submission (test ids in the first member's order, probabilities clipped at 1e-15 \
    and renormalised) and blend.json next to it, and prints a table with each member's OOF log \
    loss, its weight, and the blend's in-sample and nested log loss. The nested estimate refits \
    the blend on K-1 folds, predicts the held-out fold, pools the K held-out predictions and \
    scores them once.\n\n\
    Example:\n  \
    ensemble blend --members runs/lgbm runs/deberta gemma=extra/g_oof.csv:extra/g_sub.csv \
    --weights auto --train train.csv --out submission.csv";

#[derive(Args, Debug)]
pub struct BlendArgs {
    /// The members, one or more. A member is a run folder `DIR` holding oof.csv,
    /// submission.csv and optionally folds.csv (named after the folder), or explicit files
    /// `NAME=OOF.csv:SUBMISSION.csv[:FOLDS.csv]` (paths must not contain `:`).
    #[arg(long, value_name = "MEMBER", num_args = 1.., default_value = "runs/lgbm")]
    pub members: Vec<ensembles::blend::MemberSource>,
    /// Training file in Kaggle's train.csv format (plain or .gz): the ids and labels the OOF
    /// predictions are scored against. Defaults to the training file recorded in the first
    /// member run folder's metrics.json.
    #[arg(long, value_name = "PATH")]
    pub train: Option<PathBuf>,
    /// The submission to write; blend.json is written next to it (not with --apply).
    #[arg(long, value_name = "PATH", default_value = "submission.csv")]
    pub out: PathBuf,
    /// Reapply the blend an earlier `blend` saved in this blend.json to the members' (new)
    /// submission.csv files: no OOF files, labels or fitting. The members must be the ones it
    /// was fitted on, in the same order (checked by name).
    #[arg(long, value_name = "BLEND.json", conflicts_with_all = ["train", "method", "weights",
        "space", "calibrate", "folds_file"])]
    pub apply: Option<PathBuf>,
    /// `weighted`: a convex combination of the members (see --weights, --space, --calibrate).
    /// `stack`: a multinomial logistic regression on the members' log-probabilities, fitted
    /// out of fold for the estimate and on all rows for the test.
    #[arg(long, value_enum, default_value_t = BlendMethod::Weighted)]
    pub method: BlendMethod,
    /// `auto`: non-negative weights summing to 1 that minimise the OOF log loss. Or one weight
    /// per member, in --members order, e.g. `0.7,0.3` (rescaled to sum to 1). Weighted method
    /// only [default: auto].
    #[arg(long, value_name = "auto|W1,W2,..")]
    pub weights: Option<String>,
    /// `probability`: weighted mean of the probabilities. `logit`: weighted mean of the
    /// log-probabilities, softmax-renormalised. Weighted method only [default: probability].
    #[arg(long, value_enum)]
    pub space: Option<BlendSpace>,
    /// Also fit a temperature on the blended log-probabilities (weighted method only).
    #[arg(long)]
    pub calibrate: bool,
    /// Folds of the nested estimate as an `id,fold` file. Members' own folds.csv files come
    /// first (and must agree with it); without either, stratified folds are made.
    #[arg(long, value_name = "PATH")]
    pub folds_file: Option<PathBuf>,
    /// Number of stratified folds, when neither the members nor --folds-file give folds.
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub folds: usize,
    /// Seed of the stratified folds.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlendMethod {
    Weighted,
    Stack,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlendSpace {
    Probability,
    Logit,
}

#[derive(Args, Debug)]
pub struct CvArgs {
    /// Training file in Kaggle's train.csv format (plain or .gz). Without it, a generated
    /// example (2,000 arena-like battles) is written to OUT/example and used.
    #[arg(long, value_name = "PATH")]
    pub train: Option<PathBuf>,
    /// Test file in Kaggle's test.csv format (plain or .gz). Defaults to the example's test
    /// file when --train is not given. Without it, --train runs the CV alone: every output but
    /// submission.csv. Its text (never a
    /// label) joins the training text in fitting the TF-IDF vocabularies and idf, so the OOF
    /// score of a run depends slightly on the test file given.
    #[arg(long, value_name = "PATH")]
    pub test: Option<PathBuf>,
    /// Output folder: folds.csv, oof.csv, submission.csv, metrics.json, importance.csv,
    /// importance.svg, models/. A finished run replaces it as a whole (a failed one leaves it
    /// as it was), so it must not hold the inputs.
    #[arg(long, value_name = "DIR", default_value = "runs/lgbm")]
    pub out: PathBuf,
    /// Number of stratified folds [config: cv.folds, default 10].
    #[arg(long, value_name = "K")]
    pub folds: Option<usize>,
    /// Reuse fold assignments from a folds.csv (id,fold) instead of making new ones, so that
    /// several members hold out the same rows.
    #[arg(long, value_name = "PATH", conflicts_with = "folds")]
    pub folds_file: Option<PathBuf>,
    /// Seed of the folds and of LightGBM [config: cv.seed and lgbm.seed, default 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep battles with the same prompt in one fold (stratified group k-fold), so that OOF
    /// scores are not flattered by prompts seen in training [config: cv.group_by, default
    /// none].
    #[arg(
        long,
        value_enum,
        value_name = "none|prompt",
        conflicts_with = "folds_file"
    )]
    pub group_by: Option<crate::config::FoldGroups>,
    /// TOML config with [cv], [features] and [lgbm] tables; flags override it. The defaults
    /// are those of configs/lgbm.toml.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// LightGBM learning rate [config: lgbm.learning_rate, default auto: 0.2 from 20,000
    /// training battles, else 0.1].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// LightGBM leaves per tree [config: lgbm.num_leaves].
    #[arg(long)]
    pub num_leaves: Option<usize>,
    /// Most boosting rounds per fold [config: lgbm.max_rounds].
    #[arg(long)]
    pub max_rounds: Option<usize>,
    /// Stop a fold after this many rounds without a better log loss on the watched rows
    /// [config: lgbm.early_stopping_rounds, default auto: 25 from 20,000 training battles,
    /// else 50].
    #[arg(long)]
    pub early_stopping: Option<usize>,
    /// The rows early stopping watches. `inner-fold`: the next fold, left out of training, so
    /// the held-out fold is never looked at before it is scored (honest OOF; models train on
    /// K-2 folds). `held-out`: the held-out fold itself, as many notebooks do; it flatters
    /// the OOF score [config: lgbm.early_stopping_on, default inner-fold].
    #[arg(long, value_name = "inner-fold|held-out")]
    pub early_stopping_on: Option<ensemble_core::folds::StoppingRows>,
    /// After inner-fold early stopping has chosen a fold's round count, train the fold's
    /// model again on the training and watched folds (K-1, never the held-out one).
    /// `same-rounds` keeps the count; `scaled-rounds` scales it by the ratio of training rows;
    /// `none` keeps the early-stopped model (K-2 folds). Costs a second fit per fold
    /// [config: lgbm.refit, default none].
    #[arg(long, value_name = "none|same-rounds|scaled-rounds")]
    pub refit: Option<ensembles::cv::Refit>,
    /// LightGBM models per fold, with seeds SEED, SEED+1, ...: each fold's predictions are
    /// their mean (bagging and feature sampling differ between seeds). Costs N times the
    /// boosting time [config: lgbm.seeds, default 1]
    #[arg(long, value_name = "N")]
    pub seeds: Option<usize>,

    /// Threads for features and LightGBM; 0 means every core [config: lgbm.num_threads].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Leave out the TF-IDF features (word and character n-grams).
    #[arg(long)]
    pub no_tfidf: bool,
    /// A BERT-family sentence-encoder folder (config.json, model.safetensors,
    /// tokenizer.json, optional 1_Pooling/config.json; e.g. all-MiniLM-L6-v2 from
    /// scripts/get_minilm.sh): adds the cosines of the texts' embeddings as features,
    /// each distinct text embedded once and cached [config: encoder.dir].
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
}

#[cfg(feature = "transformer")]
#[derive(Args, Debug)]
pub struct TransformerArgs {
    /// Hugging Face model folder as downloaded; its config.json's model_type picks the member.
    /// DeBERTa-v2/v3 (e.g. microsoft/deberta-v3-base): config.json, model.safetensors or
    /// pytorch_model.bin, tokenizer.json or spm.model; every weight is fine-tuned. A decoder
    /// LLM, Gemma-2, Qwen2 or Llama (e.g. google/gemma-2-9b-it): config.json,
    /// model.safetensors or its shards with model.safetensors.index.json, tokenizer.json; LoRA
    /// adapters and the head are trained on the frozen base, and --predict-only needs the same
    /// base again. Needed to train (DeBERTa: not with --merge or --predict-only).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["merge", "predict_only"])]
    pub model: Option<PathBuf>,
    /// Training file in Kaggle's train.csv format (plain or .gz).
    #[arg(long, value_name = "PATH")]
    pub train: PathBuf,
    /// Test file in Kaggle's test.csv format (plain or .gz); submission.csv follows its order.
    #[arg(long, value_name = "PATH")]
    pub test: PathBuf,
    /// folds.csv (id,fold) from `ensemble cv`, so that OOF rows line up with the other
    /// members. Without it, stratified folds are made (--folds, config seed) and written to
    /// OUT/folds.csv, which --merge and --predict-only then read.
    #[arg(long, value_name = "PATH")]
    pub folds_file: Option<PathBuf>,
    /// Number of folds to make when no --folds-file is given.
    #[arg(
        long,
        value_name = "K",
        default_value_t = 5,
        conflicts_with = "folds_file"
    )]
    pub folds: usize,
    /// New folds keep battles with the same prompt in one fold (stratified group k-fold), as
    /// `cv --group-by prompt` does, so that OOF scores are not flattered by prompts seen in
    /// training (LoRA adapters memorise them). A run warns when prompts span folds
    /// [default: none].
    #[arg(
        long,
        value_enum,
        value_name = "none|prompt",
        conflicts_with = "folds_file"
    )]
    pub group_by: Option<crate::config::FoldGroups>,
    /// Output folder: fold-K/ per fold, then oof.csv, oof_logits.csv, submission.csv,
    /// test_logits.csv and metrics.json once every fold is there [default: runs/deberta, or
    /// runs/llm when --model is a decoder LLM]
    #[arg(long = "out", value_name = "DIR")]
    pub out_given: Option<PathBuf>,
    /// Where to run: cpu, or cuda:N with a binary built with `--features cuda` (compiled, but
    /// not yet run on a GPU in this project). GPUs below compute capability 7.0 (P100) are
    /// refused, and bf16 below 8.0 (T4, V100).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Train only fold K (0-based) and write OUT/fold-K/, e.g. one fold per GPU; run again
    /// with --merge once all folds are done. Without it, a scheduler's array index picks the
    /// fold: SLURM_ARRAY_TASK_ID (a Slurm job array, `--array=0-9`) or JOB_COMPLETION_INDEX
    /// (a Kubernetes Indexed Job); `--fold all` trains every fold even there (see
    /// examples/slurm and examples/kubernetes).
    #[arg(long, value_name = "K|all", conflicts_with = "merge")]
    pub fold: Option<neural::run::FoldChoice>,
    /// Only assemble the fold outputs already in OUT into oof.csv and submission.csv.
    #[arg(long)]
    pub merge: bool,
    /// Tokens per sequence, special tokens included; DeBERTa's relative positions allow
    /// 1024 [config: max_len, default 512].
    #[arg(long, value_name = "N")]
    pub max_len: Option<usize>,
    /// Training epochs per fold [config: epochs, default 2].
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// The rows that pick each fold's best checkpoint. `inner-fold`: the next fold, left out
    /// of training, so the held-out fold is predicted without having been looked at (needs 3
    /// folds or more). `held-out`: the held-out fold itself, which flatters the OOF score
    /// [config: early_stopping_on, default inner-fold].
    #[arg(long, value_name = "inner-fold|held-out")]
    pub early_stopping_on: Option<ensemble_core::folds::StoppingRows>,
    /// Activations and matmuls in f32, or in bf16 (GPUs with bf16 tensor cores: A100, L4,
    /// H100) or f16 with dynamic loss scaling (T4, V100), with f32 weights, optimizer,
    /// LayerNorm and softmax (mixed precision) [config: precision, default f32].
    #[arg(long, value_name = "f32|bf16|f16")]
    pub precision: Option<neural::Precision>,
    /// Recompute each layer in the backward pass instead of keeping its activations: about
    /// half DeBERTa's training memory for about a quarter more time (CPU, 512 tokens) [config:
    /// gradient_checkpointing, default false].
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// DeBERTa: also write each fold's fine-tuned model to OUT/fold-K/model/ as a Hugging Face
    /// folder (model.safetensors, config.json with the class names, tokenizer files): about
    /// 0.7 GB per fold for deberta-v3-base. The LLM member always writes its fold's adapter to
    /// OUT/fold-K/adapter/ in PEFT's format (f32; about 0.2 GB for Gemma-2-9B at r 16 on all
    /// seven projections), which Python's peft also loads.
    #[arg(long)]
    pub save_models: bool,
    /// Do not train: predict --test with the fold models an earlier --save-models run left in
    /// OUT/fold-K/model/, or the LLM member's OUT/fold-K/adapter/ on the --model base (all
    /// folds, or --fold K), then merge as usual: for a new test file, e.g. a Kaggle
    /// notebook's hidden one. The settings are the folds' unless given; the max length and
    /// template must be training's, the precision may differ (f16 or f32 for a bf16-trained
    /// run on a GPU without bf16, which moves the logits slightly).
    #[arg(long, conflicts_with_all = ["merge", "save_models"])]
    pub predict_only: bool,
    /// LLM member with --predict-only: the base's weights in 8 bits (Q8_0 projections, an
    /// 8-bit embedding table; about 0.54× the bytes of f16), quantized as they are read, so
    /// that the dense base is never held (peak memory 0.60× the bf16 weights on Gemma-2-2B's
    /// shape, measured on the CPU: BENCHMARKS.md); moves the logits slightly (README).
    #[arg(long, requires = "predict_only")]
    pub int8_base: bool,
    /// TOML training config; flags override it. The defaults are those of
    /// configs/deberta.toml (DeBERTa) or configs/llm.toml (the LLM member).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A run folder written by `ensemble cv` (features.json, models/, metrics.json).
    #[arg(long, value_name = "DIR", default_value = "runs/lgbm")]
    pub run: PathBuf,
    /// Test file in Kaggle's test.csv format (plain or .gz).
    #[arg(long, value_name = "PATH")]
    pub test: PathBuf,
    /// Output folder for submission.csv and predict.json; replaced as a whole, as `cv`'s is, so
    /// it must not be or hold the run folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Threads for features and LightGBM (0: all cores).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// The sentence-encoder folder, for a run made with --encoder when the folder has moved
    /// since (it must be the same encoder: checked by fingerprint). Default: the recorded one.
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImportanceArgs {
    /// A run folder written by `ensemble cv` (it reads importance.csv, and
    /// importance_by_fold.csv with --by-fold).
    #[arg(long, value_name = "DIR", default_value = "runs/lgbm")]
    pub run: PathBuf,
    /// How many features to show, by gain.
    #[arg(long, default_value_t = 30)]
    pub top: usize,
    /// Only features whose names match this glob pattern, e.g. '*hedges' or 'sem_*'; their
    /// rank is still among all features.
    #[arg(long, value_name = "GLOB")]
    pub features: Option<String>,
    /// Also each fold's share of the gain, and in how many folds a feature is used at all:
    /// a feature that carries weight in every fold is signal, one in a single fold may be
    /// noise.
    #[arg(long)]
    pub by_fold: bool,
}

const TUNE_ABOUT: &str = "Searches LightGBM's main parameters and writes the winner as a \
    config for `ensemble cv --config`.\n\n\
    Candidates: the starting config (configs/lgbm.toml's [lgbm], or --config's) and TRIALS-1 \
    random draws, seeded: leaves 8-128, min data in leaf 10-200, feature fraction 0.3-1, \
    bagging fraction 0.4-1, learning rate 0.02-0.2 (rounds by early stopping), lambda_l2 \
    0.01-10, max_bin 31/63/127/255.\n\n\
    Each candidate gets a plain K-fold CV; the lowest OOF log loss wins and is written to \
    OUT/best.toml. That winner's score was chosen on the folds it is scored on, so it is \
    optimistic. The nested log loss is the honest one: for each fold, the candidates are \
    ranked by a CV over the other folds only, and the fold is scored by that ranking's \
    winner. Cost: TRIALS x K x K models, so keep K small (default 5) and group by prompt \
    where prompts repeat.\n\n\
    Writes OUT/best.toml, OUT/trials.csv (every candidate, its CV log loss, the folds whose \
    inner ranking chose it), OUT/tune.json and OUT/folds.csv.\n\n\
    Example:\n  \
    ensemble tune --trials 20 --group-by prompt --train train.csv --out runs/tune\n  \
    ensemble cv --config runs/tune/best.toml --train train.csv --test test.csv";

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Training file in Kaggle's train.csv format (plain or .gz).
    #[arg(long, value_name = "PATH")]
    pub train: PathBuf,
    /// Output folder: best.toml, trials.csv, tune.json, folds.csv; replaced as a whole, as
    /// `cv`'s is.
    #[arg(long, value_name = "DIR", default_value = "runs/tune")]
    pub out: PathBuf,
    /// Candidates, the starting config included.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub trials: usize,
    /// Seed of the candidates' draws.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Folds of the search (at least 4 with early stopping on an inner fold).
    #[arg(
        long,
        value_name = "K",
        default_value_t = 5,
        conflicts_with = "folds_file"
    )]
    pub folds: usize,
    /// Reuse fold assignments from a folds.csv (id,fold).
    #[arg(long, value_name = "PATH")]
    pub folds_file: Option<PathBuf>,
    /// Keep battles with the same prompt in one fold [config: cv.group_by].
    #[arg(long, value_enum, conflicts_with = "folds_file")]
    pub group_by: Option<crate::config::FoldGroups>,
    /// The starting config: its [lgbm] is the first candidate and fixes everything not
    /// searched; its [features] and [encoder] make the features. Defaults: configs/lgbm.toml.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Threads for features and LightGBM; 0 means every core [config: lgbm.num_threads].
    #[arg(long)]
    pub threads: Option<usize>,
    /// A sentence-encoder folder for the semantic features, as in `cv` [config: encoder.dir].
    #[arg(long, value_name = "DIR")]
    pub encoder: Option<PathBuf>,
}

const COMPARE_ABOUT: &str = "Compares `cv` runs made on the same folds against a base run.\n\n\
    For each run: its OOF log loss and the difference to the base's, the mean and standard \
    deviation of the per-fold differences (run − base), their standard error (sd / √folds), how \
    many folds got better, and a verdict: the mean difference in standard errors, read as \
    better or worse beyond two, better or worse by one to two, otherwise within one (noise). \
    A change chosen because it looked better on these folds should be confirmed on other \
    folds (`cv --group-by prompt --seed N`). The runs must hold out the same rows: make them \
    with `--folds-file BASE/folds.csv`.\n\n\
    Example:\n  \
    ensemble cv --group-by prompt --train train.csv --out runs/base\n  \
    ensemble cv --folds-file runs/base/folds.csv --config new.toml --train train.csv --out runs/new\n  \
    ensemble compare runs/base runs/new";

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The base run folder (metrics.json, folds.csv).
    #[arg(value_name = "BASE")]
    pub base: PathBuf,
    /// Run folders to compare with it, made on the same folds.
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExampleArgs {
    /// Folder to write train.csv and test.csv to.
    #[arg(long, value_name = "DIR", default_value = "data/example")]
    pub out: PathBuf,
    /// Training rows to generate.
    #[arg(long, default_value_t = crate::example::TRAIN_ROWS)]
    pub rows: usize,
    /// Test rows to generate.
    #[arg(long, default_value_t = crate::example::TEST_ROWS)]
    pub test_rows: usize,
    #[arg(long, default_value_t = crate::example::SEED)]
    pub seed: u64,
}
