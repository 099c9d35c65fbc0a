//! The transformer member against the tiny fixture model that `scripts/make_tiny_deberta.py`
//! made with Hugging Face transformers: token ids, logits, loading errors, swap averaging and
//! training.
use std::path::{Path, PathBuf};

use candle_core::Device;
use deberta::Error;
use deberta::{load_tokenizer, Classifier, DebertaConfig, Layout, TextEncoder};
use ensemble_core::{probs_from_logits, Outcome};
use neural::{fit_fold, Precision, ResponsePair, SegmentBudget, TrainingConfig};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("tiny-deberta")
}

#[derive(Deserialize)]
struct Expected {
    tokens: Vec<TokenCase>,
    pairs: Vec<PairCase>,
    logits: Vec<LogitCase>,
}

#[derive(Deserialize)]
struct TokenCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct PairCase {
    first: String,
    second: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct LogitCase {
    prompt: String,
    response_a: String,
    response_b: String,
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixtures().join("tiny-deberta-expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A model folder in a temporary directory holding the named fixture files.
fn folder_with(files: &[(&str, PathBuf)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        std::fs::copy(source, dir.path().join(name)).unwrap();
    }
    dir
}

fn check_token_ids(tokenizer: &tokenizers::Tokenizer) {
    let expected = expected();
    for case in &expected.tokens {
        let ids = tokenizer
            .encode(case.text.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
    }
    for case in &expected.pairs {
        let ids = tokenizer
            .encode((case.first.as_str(), case.second.as_str()), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ids,
            case.ids,
            "token ids of {:?}",
            (&case.first, &case.second)
        );
    }
}

#[test]
fn tokenizer_built_from_spm_model_matches_hugging_face() {
    check_token_ids(&load_tokenizer(&model_dir()).unwrap());
}

#[test]
fn tokenizer_json_matches_hugging_face() {
    let dir = folder_with(&[(
        "tokenizer.json",
        fixtures().join("tiny-deberta-tokenizer.json"),
    )]);
    check_token_ids(&load_tokenizer(dir.path()).unwrap());
}

/// Checks the token ids exactly and the logits of one padded batch (as the reference was
/// computed) within `tolerance` of Hugging Face's; returns the largest difference.
fn check_logits(classifier: &Classifier, tolerance: f32) -> f32 {
    let expected = expected();
    let pairs: Vec<ResponsePair> = expected
        .logits
        .iter()
        .map(|c| ResponsePair {
            prompt: c.prompt.clone(),
            response_a: c.response_a.clone(),
            response_b: c.response_b.clone(),
        })
        .collect();
    let encoded = classifier.encode(&pairs).unwrap();
    let sequences: Vec<Vec<u32>> = encoded.iter().map(|e| e.as_given[0].clone()).collect();
    for (sequence, case) in sequences.iter().zip(&expected.logits) {
        assert_eq!(
            sequence, &case.ids,
            "cross-encoder layout of {:?}",
            case.prompt
        );
    }
    let logits = classifier.raw_logits(&sequences).unwrap();
    let mut largest = 0f32;
    for (got, case) in logits.iter().zip(&expected.logits) {
        for (g, e) in got.iter().zip(&case.logits) {
            assert!(
                (g - e).abs() < tolerance,
                "logits {got:?} vs {:?}",
                case.logits
            );
            largest = largest.max((g - e).abs());
        }
    }
    largest
}

#[test]
fn logits_match_hugging_face_from_safetensors() {
    let config = DebertaConfig::default();
    check_logits(
        &Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap(),
        1e-4,
    );
}

#[test]
fn bf16_logits_stay_near_hugging_face() {
    let config = DebertaConfig {
        training: TrainingConfig {
            precision: Precision::Bf16,
            ..TrainingConfig::default()
        },
        ..DebertaConfig::default()
    };
    let classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    // bf16 rounds every matmul input to 8 significant bits (±0.4%); through the fixture's
    // layers the logits, of order 1, move by a few hundredths: 0.045 here, 0.038 under
    // PyTorch's autocast to bf16 on the same inputs.
    let largest = check_logits(&classifier, 0.1);
    assert!(
        largest > 1e-6,
        "bf16 gave f32-exact logits: was it applied?"
    );
    // The weights themselves stay f32 (mixed precision).
    let weights = classifier.snapshot().unwrap();
    assert!(weights
        .values()
        .all(|w| w.dtype() == candle_core::DType::F32));
}

#[test]
fn logits_match_hugging_face_from_pytorch_bin() {
    let dir = folder_with(&[
        ("config.json", model_dir().join("config.json")),
        ("spm.model", model_dir().join("spm.model")),
        (
            "pytorch_model.bin",
            fixtures().join("tiny-deberta-pytorch_model.bin"),
        ),
    ]);
    let config = DebertaConfig::default();
    check_logits(
        &Classifier::load(dir.path(), &Device::Cpu, &config).unwrap(),
        1e-4,
    );
}

/// A model folder that disagrees with itself is refused at load time, naming the file and
/// what is wrong, instead of failing mid-training or dropping weights.
#[test]
fn inconsistent_model_folders_are_refused_at_load() {
    let load_with = |edit: &dyn Fn(&mut serde_json::Value), config: &DebertaConfig| {
        let dir = folder_with(&[
            ("config.json", model_dir().join("config.json")),
            ("model.safetensors", model_dir().join("model.safetensors")),
            ("spm.model", model_dir().join("spm.model")),
        ]);
        let path = dir.path().join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut json);
        // JSON has no NaN, but Python's json module writes one for float("nan").
        std::fs::write(&path, json.to_string().replace("\"NaN\"", "NaN")).unwrap();
        match Classifier::load(dir.path(), &Device::Cpu, config) {
            Err(e) => e.to_string(),
            Ok(_) => "loaded".to_owned(),
        }
    };
    let default = DebertaConfig::default();
    assert_eq!(load_with(&|_| {}, &default), "loaded");

    let message = load_with(&|c| c["num_hidden_layers"] = 1.into(), &default);
    assert!(
        message.contains("model.safetensors")
            && message.contains("encoder layer 1, but config.json's num_hidden_layers is 1"),
        "{message}"
    );
    let message = load_with(&|c| c["vocab_size"] = 100.into(), &default);
    assert!(
        message.contains("config.json")
            && message.contains("vocab_size is 100, but the tokenizer has"),
        "{message}"
    );
    let long = DebertaConfig {
        training: TrainingConfig {
            max_len: 100_000,
            ..TrainingConfig::default()
        },
        ..DebertaConfig::default()
    };
    let message = load_with(&|_| {}, &long);
    assert!(
        message.contains("max_len 100000 exceeds what this model takes: 1024 tokens"),
        "{message}"
    );

    // Values the forward pass cannot use are refused by field, before any training step.
    let config_json = |message: &str| message.contains("/config.json: ");
    for (field, value, expected) in [
        (
            "layer_norm_eps",
            serde_json::json!(-10),
            "layer_norm_eps is -10; it must be a finite number above 0",
        ),
        (
            "layer_norm_eps",
            serde_json::json!(0),
            "layer_norm_eps is 0; it must be a finite number above 0",
        ),
        (
            "hidden_size",
            serde_json::json!(0),
            "hidden_size is 0; it must be at least 1",
        ),
        (
            "intermediate_size",
            serde_json::json!(0),
            "intermediate_size is 0; it must be at least 1",
        ),
        (
            "num_attention_heads",
            serde_json::json!(3),
            "hidden_size 32 is not a multiple of num_attention_heads 3",
        ),
        (
            "hidden_dropout_prob",
            serde_json::json!(1.5),
            "hidden_dropout_prob is 1.5; a dropout probability lies in [0, 1)",
        ),
        (
            "hidden_act",
            serde_json::json!("swish"),
            "hidden_act \"swish\" is not supported",
        ),
    ] {
        let message = load_with(&|c| c[field] = value.clone(), &default);
        assert!(
            config_json(&message) && message.contains(expected),
            "{field}: {message}"
        );
    }
    let message = load_with(&|c| c["layer_norm_eps"] = "NaN".into(), &default);
    assert!(config_json(&message), "{message}");
}

/// A long text is tokenized from its head and tail only, and the sequences built from it are
/// those of the whole text.
#[test]
fn long_texts_are_cut_before_tokenizing_without_changing_the_sequences() {
    let encoder = TextEncoder::new(
        load_tokenizer(&model_dir()).unwrap(),
        SegmentBudget::default(),
    )
    .unwrap();
    let words = [
        "the",
        "answer,",
        "explained:",
        "Ünïcode",
        "token",
        "ids",
        "(x)",
        "and",
        "more",
        "text.",
    ];
    let long: String = (0..60_000)
        .map(|i| words[(i * 7 + i / 13) % words.len()])
        .collect::<Vec<_>>()
        .join(" ");
    let prompt = "What is in the middle?";
    for max_len in [16, 64, 512] {
        let cut = encoder
            .token_ids(&[prompt, &long, "short"], max_len)
            .unwrap();
        let whole = encoder
            .token_ids(&[prompt, &long, "short"], usize::MAX)
            .unwrap();
        assert!(
            cut[1].len() < whole[1].len() / 10,
            "the middle was not tokenized"
        );
        assert_eq!(
            encoder.cross(&cut[0], &cut[1], &cut[2], max_len),
            encoder.cross(&whole[0], &whole[1], &whole[2], max_len),
            "max_len {max_len}"
        );
        assert_eq!(
            encoder.cross(&cut[0], &cut[2], &cut[1], max_len),
            encoder.cross(&whole[0], &whole[2], &whole[1], max_len),
        );
    }
}

#[test]
fn missing_files_are_named() {
    let config = DebertaConfig::default();
    let message = |dir: &Path| match Classifier::load(dir, &Device::Cpu, &config) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loading {} should fail", dir.display()),
    };
    let empty = tempfile::tempdir().unwrap();
    assert!(message(empty.path()).contains("config.json"));

    let no_weights = folder_with(&[("config.json", model_dir().join("config.json"))]);
    let text = message(no_weights.path());
    assert!(
        text.contains("model.safetensors") && text.contains("pytorch_model.bin"),
        "{text}"
    );

    let no_tokenizer = folder_with(&[
        ("config.json", model_dir().join("config.json")),
        ("model.safetensors", model_dir().join("model.safetensors")),
    ]);
    let text = message(no_tokenizer.path());
    assert!(
        text.contains("spm.model") && text.contains("tokenizer.json"),
        "{text}"
    );

    let broken = folder_with(&[
        ("config.json", model_dir().join("config.json")),
        ("model.safetensors", model_dir().join("model.safetensors")),
    ]);
    std::fs::write(broken.path().join("spm.model"), b"not a protobuf").unwrap();
    assert!(matches!(
        Classifier::load(broken.path(), &Device::Cpu, &config),
        Err(Error::BadModelFile { path, .. }) if path.ends_with("spm.model")
    ));
}

fn battles(n: usize) -> (Vec<ResponsePair>, Vec<Outcome>) {
    // Separable: the label is which response says "good" (a tie when both do).
    let mut pairs = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let (a, b, label) = match i % 3 {
            0 => ("good answer here", "bad answer there", Outcome::A),
            1 => ("bad answer there", "good answer here", Outcome::B),
            _ => ("good answer here", "good answer here too", Outcome::Tie),
        };
        pairs.push(ResponsePair {
            prompt: format!("Question number {i}?"),
            response_a: a.into(),
            response_b: b.into(),
        });
        labels.push(label);
    }
    (pairs, labels)
}

#[test]
fn swap_averaging_mirrors_exactly_in_both_layouts() {
    for layout in [Layout::Cross, Layout::Siamese] {
        let config = DebertaConfig {
            training: TrainingConfig {
                eval_batch_size: 3,
                ..TrainingConfig::default()
            },
            layout,
            ..DebertaConfig::default()
        };
        let classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
        let (pairs, _) = battles(7);
        let swapped: Vec<ResponsePair> = pairs.iter().map(ResponsePair::swapped).collect();
        let forward = classifier
            .predict_logits(&classifier.encode(&pairs).unwrap())
            .unwrap();
        let backward = classifier
            .predict_logits(&classifier.encode(&swapped).unwrap())
            .unwrap();
        for (f, b) in forward.iter().zip(&backward) {
            let (pf, pb) = (probs_from_logits(f), probs_from_logits(b));
            assert_eq!([pf[0], pf[1], pf[2]], [pb[1], pb[0], pb[2]], "{layout:?}");
            assert!((pf.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
}

#[test]
fn training_lowers_the_loss_on_a_separable_task() {
    let f32_loss = training_lowers_the_loss(Precision::F32);
    training_lowers_the_loss(Precision::Bf16);
    // f16 with loss scaling trains as f32 does: the same final training loss within 2%.
    let f16_loss = training_lowers_the_loss(Precision::F16);
    assert!(
        (f16_loss - f32_loss).abs() <= 0.02 * f32_loss,
        "final training loss f16 {f16_loss} vs f32 {f32_loss}"
    );
}

/// Fine-tunes the fixture briefly in `precision`; returns the last training loss.
fn training_lowers_the_loss(precision: Precision) -> f64 {
    let config = DebertaConfig {
        training: TrainingConfig {
            precision,
            // Low enough that no step of this short run overflows, so that f16 and f32 take
            // the same steps (the overflow path has its own test).
            loss_scale: 1024.0,
            max_len: 32,
            batch_size: 8,
            grad_accumulation: 1,
            epochs: 6,
            learning_rate: 3e-3,
            head_learning_rate: 3e-3,
            warmup_ratio: 0.0,
            patience: 6,
            ..TrainingConfig::default()
        },
        ..DebertaConfig::default()
    };
    let mut classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    let (pairs, labels) = battles(48);
    let encoded = classifier.encode(&pairs).unwrap();
    let (train, valid) = encoded.split_at(36);
    let (train_labels, valid_labels) = labels.split_at(36);
    let before: Vec<_> = classifier.predict_logits(valid).unwrap();
    let before = ensemble_core::metrics::log_loss(
        valid_labels,
        &before.iter().map(probs_from_logits).collect::<Vec<_>>(),
    );
    let result = fit_fold(&mut classifier, train, train_labels, valid, valid_labels, 0).unwrap();
    let first = &result.history[0];
    let last = result.history.last().unwrap();
    assert!(
        last.train_loss < first.train_loss,
        "{precision:?}: {:?}",
        result.history
    );
    assert!(
        result.best_log_loss < before * 0.8,
        "{precision:?}: {before} -> {:?}",
        result.history
    );
    assert_eq!(result.valid_logits.len(), valid.len());
    // The classifier is left at the best checkpoint.
    let after = classifier.predict_logits(valid).unwrap();
    assert_eq!(after, result.valid_logits);
    // Only f16 scales the loss.
    match &result.loss_scale {
        Some(scaler) => {
            assert_eq!(precision, Precision::F16);
            assert_eq!((scaler.scale, scaler.skipped_steps), (1024.0, 0));
        }
        None => assert_ne!(precision, Precision::F16),
    }
    last.train_loss
}

#[test]
fn an_overflowing_f16_step_is_skipped_and_halves_the_loss_scale() {
    // A loss scale of 1e300 overflows f32, let alone f16: every step's gradients are infinite.
    let config = DebertaConfig {
        training: TrainingConfig {
            precision: Precision::F16,
            loss_scale: 1e300,
            ..one_short_epoch().training
        },
        ..one_short_epoch()
    };
    let mut classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    let before = classifier.snapshot().unwrap();
    let (pairs, labels) = battles(12);
    let encoded = classifier.encode(&pairs).unwrap();
    let result = fit_fold(
        &mut classifier,
        &encoded[..8],
        &labels[..8],
        &encoded[8..],
        &labels[8..],
        0,
    )
    .unwrap();
    assert_eq!(result.steps, 2);
    let scaler = result.loss_scale.expect("f16 reports its loss scale");
    assert_eq!(scaler.skipped_steps, 2);
    assert_eq!(scaler.scale, 1e300 / 4.0);
    let after = classifier.snapshot().unwrap();
    for (name, weight) in &before {
        let moved = neural::testing::max_difference(weight, &after[name]);
        assert_eq!(moved, 0.0, "{name} moved in a skipped step");
    }
}

#[test]
fn f16_logits_stay_near_f32() {
    let config = DebertaConfig {
        training: TrainingConfig {
            precision: Precision::F16,
            ..TrainingConfig::default()
        },
        ..DebertaConfig::default()
    };
    let classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    // Hugging Face's f32 logits, which candle's f32 matches within 1e-4 (tests above).
    let largest = check_logits(&classifier, 1e-2);
    assert!(largest > 1e-6, "f16 gave f32-exact logits: was it applied?");
}

/// One epoch of one step at a high learning rate: enough to move every trained weight.
fn one_short_epoch() -> DebertaConfig {
    DebertaConfig {
        training: TrainingConfig {
            max_len: 32,
            batch_size: 4,
            grad_accumulation: 1,
            epochs: 1,
            learning_rate: 1e-2,
            head_learning_rate: 1e-2,
            warmup_ratio: 0.0,
            ..TrainingConfig::default()
        },
        ..DebertaConfig::default()
    }
}

/// Fits on 4 battles, early-stopping on 4 more; returns all 8 encoded.
fn fit_briefly(classifier: &mut Classifier) -> Vec<neural::EncodedPair> {
    let (pairs, labels) = battles(8);
    let encoded = classifier.encode(&pairs).unwrap();
    fit_fold(
        classifier,
        &encoded[..4],
        &labels[..4],
        &encoded[4..],
        &labels[4..],
        0,
    )
    .unwrap();
    encoded
}

#[test]
fn frozen_layers_do_not_move() {
    let mut config = one_short_epoch();
    config.unfreeze.head_only_steps = 0;
    config.unfreeze.top_layers = 1;
    config.unfreeze.top_layers_steps = 100;
    let mut classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    let before = classifier.snapshot().unwrap();
    fit_briefly(&mut classifier);
    let after = classifier.snapshot().unwrap();
    let moved = |name: &str| {
        let diff = (&before[name] - &after[name]).unwrap().abs().unwrap();
        diff.flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    };
    for name in before.keys() {
        let frozen = name.starts_with("deberta.embeddings")
            || name.starts_with("deberta.encoder.layer.0.")
            || name.starts_with("deberta.encoder.rel_embeddings")
            || name.starts_with("deberta.encoder.LayerNorm");
        if frozen {
            assert!(!moved(name), "{name} is frozen but changed");
        }
    }
    assert!(moved("classifier.weight"));
    assert!(moved(
        "deberta.encoder.layer.1.attention.self.query_proj.weight"
    ));
}

#[test]
fn sequences_of_1024_tokens_run() {
    let config = DebertaConfig {
        training: TrainingConfig {
            max_len: 1024,
            ..TrainingConfig::default()
        },
        ..DebertaConfig::default()
    };
    let classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    let long = "word ".repeat(2000);
    let pairs = vec![ResponsePair {
        prompt: long.clone(),
        response_a: long.clone(),
        response_b: "short".into(),
    }];
    let encoded = classifier.encode(&pairs).unwrap();
    // Rounding the shares down may leave a token or two of the budget unused.
    assert!((1020..=1024).contains(&encoded[0].as_given[0].len()));
    let logits = classifier.predict_logits(&encoded).unwrap();
    assert!(logits[0].iter().all(|l| l.is_finite()));
}

#[test]
fn a_saved_model_loads_back_with_the_same_predictions() {
    let config = one_short_epoch();
    let mut classifier = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    let encoded = fit_briefly(&mut classifier);
    let trained = classifier.predict_logits(&encoded).unwrap();
    let saved = tempfile::tempdir().unwrap();
    classifier.save_pretrained(saved.path()).unwrap();

    let reloaded = Classifier::load(saved.path(), &Device::Cpu, &config).unwrap();
    assert_eq!(reloaded.predict_logits(&encoded).unwrap(), trained);
    let untrained = Classifier::load(&model_dir(), &Device::Cpu, &config).unwrap();
    assert_ne!(untrained.predict_logits(&encoded).unwrap(), trained);

    let text = std::fs::read_to_string(saved.path().join("config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["id2label"]["2"], "winner_tie");
    assert_eq!(json["ensemble_layout"], "cross");
    assert!(saved.path().join("spm.model").is_file());
    // The head fits the cross layout only, so a siamese run refuses it.
    let siamese = DebertaConfig {
        layout: Layout::Siamese,
        ..config
    };
    assert!(matches!(
        Classifier::load(saved.path(), &Device::Cpu, &siamese),
        Err(Error::BadModelFile { path, .. }) if path.ends_with("config.json")
    ));
}
