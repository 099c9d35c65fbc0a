//! The LLM member through the shared fold loop, on the tiny fixtures: its settings,
//! gradient checkpointing, a fold trained, saved in PEFT's format and loaded back, swap
//! symmetry, a causal-LM folder without a head, and the memory estimate.
use candle_core::{DType, Device, Tensor};
use ensemble_core::Outcome;
use llm::{DecoderClassifier, LlmConfig, LlmMember};
use neural::{fit_fold, DropoutRng, EncodedPair, FoldModel, FoldRows, MemberConfig, ResponsePair};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn table(text: &str) -> toml::Table {
    text.parse().unwrap()
}

/// Settings small enough for the tiny fixtures: 64 tokens, batches of 2.
fn small_config() -> LlmConfig {
    let mut config = LlmConfig::default();
    config.training.max_len = 96;
    config.training.batch_size = 2;
    config.training.eval_batch_size = 3;
    config.training.grad_accumulation = 1;
    config.lora.r = 4;
    config.lora.alpha = 8.0;
    config
}

/// Battles whose winner the text says: "good" wins over "bad", two "fine"s tie.
fn battles(n: usize) -> (Vec<ResponsePair>, Vec<Outcome>) {
    (0..n)
        .map(|i| {
            let (a, b, outcome) = match i % 3 {
                0 => ("good", "bad", Outcome::A),
                1 => ("bad", "good", Outcome::B),
                _ => ("fine", "fine", Outcome::Tie),
            };
            let pair = ResponsePair {
                prompt: format!("question {i}"),
                response_a: format!("{a} answer {}", "words ".repeat(i % 4)),
                response_b: format!("{b} answer"),
            };
            (pair, outcome)
        })
        .unzip()
}

/// The rows as given, padded on the right with the fixtures' pad id (400), and their masks.
fn right_padded(encoded: &[EncodedPair]) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let len = encoded.iter().map(EncodedPair::longest).max().unwrap();
    encoded
        .iter()
        .map(|e| {
            let row = &e.as_given[0];
            let fill = len - row.len();
            (
                [row.clone(), vec![400; fill]].concat(),
                [vec![1; row.len()], vec![0; fill]].concat(),
            )
        })
        .unzip()
}

fn log_loss(logits: &[[f32; 3]], labels: &[Outcome]) -> f64 {
    let probs: Vec<_> = logits
        .iter()
        .map(ensemble_core::probs_from_logits)
        .collect();
    ensemble_core::metrics::log_loss(labels, &probs)
}

#[test]
fn settings_are_read_over_the_defaults_and_bad_keys_named() {
    let config = LlmConfig::from_table(table(
        "max_len = 96\nlearning_rate = 1e-4\n[lora]\nr = 8\n[segments]\nprompt_share = 0.3",
    ))
    .unwrap();
    let defaults = LlmConfig::default();
    assert_eq!(config.training.max_len, 96);
    assert_eq!(config.training.learning_rate, 1e-4);
    assert_eq!(config.training.batch_size, defaults.training.batch_size);
    assert_eq!(config.lora.r, 8);
    // A table given in part keeps the defaults of its other keys.
    assert_eq!(config.lora.alpha, defaults.lora.alpha);
    assert_eq!(config.lora.target_modules.len(), 7);
    assert_eq!(config.training.segments.prompt_share, 0.3);
    assert_eq!(
        config.training.segments.head_share,
        defaults.training.segments.head_share
    );

    let error = |text: &str| LlmConfig::from_table(table(text)).unwrap_err();
    // DeBERTa's own keys are not the LLM member's.
    assert!(error("layout = \"cross\"").starts_with("unknown key layout"));
    assert!(error("[unfreeze]\ntop_layers = 2").starts_with("unknown key unfreeze"));
    assert!(error("lora_r = 8").starts_with("unknown key lora_r"));
    assert!(error("[lora]\nrank = 8").contains("unknown field `rank`"));
    assert!(error("template = \"{prompt} {response_a}\"").contains("{response_b} appears 0"));
    assert!(
        error("template = \"{prompt} {response_a} {response_b} {response_c}\"")
            .starts_with("template: {response_c} is not a placeholder")
    );
    assert!(
        error("template = \"{Prompt}: {prompt} {response_a} {response_b}\"")
            .contains("{Prompt} is not a placeholder")
    );
    // Braces that are no placeholder stay text.
    let braces = "template = \"{prompt} {response_a} {response_b} {\\\"json\\\": 1} {} {1}\"";
    assert!(LlmConfig::from_table(table(braces)).is_ok(), "{braces}");
    assert!(error("[lora]\ntarget_modules = [\"lm_head\"]").contains("target_modules"));
    assert!(error("[lora]\ndropout = 1.0").contains("dropout 1 must be in [0, 1)"));
}

#[test]
fn configs_llm_toml_states_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/llm.toml");
    assert_eq!(
        LlmConfig::from_toml_file(&path).unwrap(),
        LlmConfig::default()
    );
}

/// The base model's fingerprint: the same for a copy, another after one byte of the weights
/// or of the tokenizer changes.
#[test]
fn the_base_fingerprint_follows_the_weights() {
    let source = fixture("tiny-llm-qwen2");
    let copy = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(source.join(name), copy.path().join(name)).unwrap();
    }
    let original = llm::base_fingerprint(&source).unwrap();
    assert_eq!(llm::base_fingerprint(copy.path()).unwrap(), original);
    let weights = copy.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    assert_ne!(llm::base_fingerprint(copy.path()).unwrap(), original);
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    assert_eq!(llm::base_fingerprint(copy.path()).unwrap(), original);
    let tokenizer = copy.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&tokenizer).unwrap();
    std::fs::write(&tokenizer, text + "\n").unwrap();
    assert_ne!(llm::base_fingerprint(copy.path()).unwrap(), original);
    let empty = tempfile::tempdir().unwrap();
    assert!(llm::base_fingerprint(empty.path())
        .unwrap_err()
        .to_string()
        .contains("missing model.safetensors"));
}

/// An over-long prompt keeps its head alone by default (`prompt_head_share = 1`): its end
/// does not reach the model, its start does; with the answers' head-and-tail cut, both do.
#[test]
fn an_over_long_prompt_keeps_its_head() {
    let encode = |prompt_head_share: Option<f64>, prompt: String| {
        let mut config = small_config();
        config.training.max_len = 160;
        config.training.segments.prompt_head_share = prompt_head_share;
        let (member, _) =
            LlmMember::load(&fixture("tiny-llm-qwen2"), &Device::Cpu, &config).unwrap();
        let pair = ResponsePair {
            prompt,
            response_a: "yes".into(),
            response_b: "no".into(),
        };
        member.encode(&[pair]).unwrap()[0].as_given[0].clone()
    };
    let words = |first: &str, last: &str| format!("{first} {} {last}", "word ".repeat(200));
    let base = words("alpha", "omega");
    for (share, end_matters) in [(Some(1.0), false), (None, true)] {
        let reference = encode(share, base.clone());
        assert!(reference.len() <= 160);
        assert_ne!(
            encode(share, words("gamma", "omega")),
            reference,
            "the start"
        );
        assert_eq!(
            encode(share, words("alpha", "delta")) != reference,
            end_matters,
            "the end, prompt_head_share {share:?}"
        );
    }
}

/// A `max_len` that leaves a field no token would make every battle read alike there:
/// refused, naming the least that fits, at which each field is read.
#[test]
fn a_max_len_that_leaves_a_field_no_token_is_refused() {
    let load = |max_len: usize| {
        let mut config = small_config();
        config.training.max_len = max_len;
        config.template = format!(
            "{} {{prompt}} {{response_a}} {{response_b}}",
            "word ".repeat(40)
        );
        LlmMember::load(&fixture("tiny-llm-qwen2"), &Device::Cpu, &config)
    };
    let error = load(16).err().unwrap().to_string();
    assert!(
        error.starts_with("max_len 16 leaves a field of the battle no token"),
        "{error}"
    );
    let least: usize = error
        .split("at least ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no least max_len in: {error}"));
    assert!(load(least - 1).is_err());
    let (member, _) = load(least).unwrap();
    let battle = |prompt: &str, a: &str, b: &str| ResponsePair {
        prompt: [prompt; 50].join(" "),
        response_a: [a; 50].join(" "),
        response_b: [b; 50].join(" "),
    };
    let [reference, prompt, a, b] = [
        battle("alpha", "yes", "no"),
        battle("omega", "yes", "no"),
        battle("alpha", "maybe", "no"),
        battle("alpha", "yes", "never"),
    ]
    .map(|pair| member.encode(&[pair]).unwrap().remove(0).as_given.remove(0));
    assert!(reference.len() <= least);
    for (changed, field) in [(prompt, "prompt"), (a, "response_a"), (b, "response_b")] {
        assert_ne!(changed, reference, "{field} is not read");
    }
}

/// fold.json records the settings as JSON; the binary tells the members' apart by whether the
/// LLM member's settings read them: its own do, a DeBERTa config's keys are unknown to it.
#[test]
fn settings_round_trip_through_json_and_are_not_a_deberta_config() {
    let config = small_config();
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(LlmConfig::from_value(json.clone()).unwrap(), config);
    for key in ["layout", "layer_lr_decay", "unfreeze"] {
        let mut deberta = json.clone();
        deberta[key] = serde_json::json!(1);
        let error = LlmConfig::from_value(deberta).unwrap_err();
        assert!(error.starts_with(&format!("unknown key {key}")), "{error}");
    }
}

/// The adapters' gradients with gradient checkpointing (each layer run again in the backward
/// pass, with the same dropout masks) equal those of the stored graph.
#[test]
fn gradient_checkpointing_gives_the_same_adapter_gradients() {
    let mut config = small_config();
    config.lora.dropout = 0.2;
    let (mut member, _) =
        LlmMember::load(&fixture("tiny-llm-gemma2"), &Device::Cpu, &config).unwrap();
    member.start_adapter(3).unwrap();
    let (pairs, labels) = battles(3);
    let encoded = member.encode(&pairs).unwrap();
    // B starts at zero, which would leave A without a gradient: one step of B first.
    for (name, var) in member.model().trainable() {
        if name.ends_with("lora_B.weight") {
            var.set(&(var.as_tensor().ones_like().unwrap() * 0.05).unwrap())
                .unwrap();
        }
    }
    let labels = Tensor::new(
        labels
            .iter()
            .map(|l| l.index() as u32)
            .collect::<Vec<_>>()
            .as_slice(),
        &Device::Cpu,
    )
    .unwrap();
    let gradients = |checkpoint: bool| {
        let (ids, mask) = right_padded(&encoded);
        let rng = DropoutRng::replay(5, &Device::Cpu).unwrap();
        let logits = member
            .model()
            .training_logits(&ids, &mask, Some(&rng), checkpoint)
            .unwrap();
        let grads = candle_nn::loss::cross_entropy(&logits, &labels)
            .unwrap()
            .backward()
            .unwrap();
        let mut recomputed = member.model().take_checkpoint_grads();
        member
            .model()
            .trainable()
            .into_iter()
            .map(|(name, var)| {
                let grad = grads
                    .get(var.as_tensor())
                    .cloned()
                    .or_else(|| recomputed.remove(&var.id()))
                    .unwrap_or_else(|| panic!("{name}: no gradient (checkpoint {checkpoint})"));
                (name, grad.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            })
            .collect::<Vec<_>>()
    };
    let (stored, checkpointed) = (gradients(false), gradients(true));
    let layers = member.model().config().num_layers;
    assert_eq!(stored.len(), 2 * 7 * layers + 1);
    for ((name, a), (_, b)) in stored.iter().zip(&checkpointed) {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: a zero gradient checks nothing");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * scale.max(1.0), "{name}: {x} vs {y}");
        }
    }
}

/// The training graph's gradients (through `lora_linear`, the RMSNorm and RoPE nodes and the
/// attention op) against central finite differences of the loss, for entries of every kind
/// of adapter matrix and of the head, on the Gemma-2 fixture (soft-capping, sliding window).
#[test]
fn adapter_and_head_gradients_match_finite_differences() {
    let config = small_config();
    let (mut member, _) =
        LlmMember::load(&fixture("tiny-llm-gemma2"), &Device::Cpu, &config).unwrap();
    member.start_adapter(5).unwrap();
    // B off zero, so that A has a gradient too.
    for (name, var) in member.model().trainable() {
        if name.ends_with("lora_B.weight") {
            let values: Vec<f32> = (0..var.elem_count())
                .map(|i| ((i * 7919 % 23) as f32 - 11.0) * 0.01)
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let (pairs, labels) = battles(3);
    let encoded = member.encode(&pairs).unwrap();
    let (ids, mask) = right_padded(&encoded);
    let targets: Vec<u32> = labels.iter().map(|l| l.index() as u32).collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    let loss = || {
        let logits = member
            .model()
            .training_logits(&ids, &mask, None, false)
            .unwrap();
        candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
    };
    let grads = loss().backward().unwrap();
    let mut checked = 0;
    for (name, var) in member.model().trainable() {
        let keep = name.contains("layers.0.")
            && (name.contains("q_proj") || name.contains("down_proj"))
            || name.contains("layers.2.self_attn.v_proj")
            || name.ends_with("score.weight");
        if !keep {
            continue;
        }
        let grad = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
        let grad = grad.to_vec1::<f32>().unwrap();
        let original = var.as_tensor().copy().unwrap();
        let weights = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let largest = (0..grad.len())
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap();
        for index in [largest, grad.len() / 2] {
            let loss_at = |delta: f32| {
                let mut moved = weights.clone();
                moved[index] += delta;
                var.set(&Tensor::from_vec(moved, original.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f32>().unwrap() as f64
            };
            let step = 1e-2f32;
            let numeric = (loss_at(step) - loss_at(-step)) / (2.0 * step as f64);
            var.set(&original).unwrap();
            let analytic = grad[index] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-4 + 0.03 * analytic.abs(),
                "{name}[{index}]: backprop {analytic:.6e}, finite difference {numeric:.6e}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 7, "entries checked");
}

/// One fold through `neural::fit_fold`: training lowers the log loss of rows it sees (from
/// 1.29 to 0.84, printed with --nocapture) below ln 3, the best any constant prediction
/// scores on these balanced battles, so it reads the answers (at `max_len` 64 the template
/// had filled every row, and training reached 1.11, the classes' rates alone),
/// the member is left at its best checkpoint, predictions are mirrored when the answers are
/// exchanged, and the adapter saved in PEFT's format predicts the same after a fresh load.
#[test]
fn a_fold_trains_through_the_shared_loop_and_its_adapter_reloads() {
    let mut config = small_config();
    config.training.epochs = 6;
    config.training.patience = 6;
    config.training.learning_rate = 1e-3;
    config.training.head_learning_rate = 1e-2;
    config.training.warmup_ratio = 0.0;
    let dir = fixture("tiny-llm-qwen2");
    let (mut member, note) = LlmMember::load(&dir, &Device::Cpu, &config).unwrap();
    assert!(note.is_none(), "qwen2's fixture has a pad token");
    member.start_adapter(11).unwrap();
    let (pairs, labels) = battles(12);
    let encoded = member.encode(&pairs).unwrap();
    let before = member.predict_logits(&encoded).unwrap();
    let result = fit_fold(&mut member, &encoded, &labels, &encoded, &labels, 0).unwrap();
    assert_eq!(result.history.len(), 6);
    let after = member.predict_logits(&encoded).unwrap();
    assert_eq!(
        after, result.valid_logits,
        "not left at the best checkpoint"
    );
    let (untrained, trained) = (log_loss(&before, &labels), log_loss(&after, &labels));
    println!("log loss of the rows trained on: {untrained:.4} before, {trained:.4} after");
    assert!(
        trained < untrained - 0.05 && trained < 3f64.ln() - 0.1,
        "log loss {untrained} before training, {trained} after"
    );

    let swapped: Vec<ResponsePair> = pairs.iter().map(ResponsePair::swapped).collect();
    let mirrored = member
        .predict_logits(&member.encode(&swapped).unwrap())
        .unwrap();
    for (given, swapped) in after.iter().zip(&mirrored) {
        assert_eq!([given[1], given[0], given[2]], *swapped);
    }

    let saved = tempfile::tempdir().unwrap();
    member.save_adapter(saved.path()).unwrap();
    let (mut reloaded, _) = LlmMember::load(&dir, &Device::Cpu, &config).unwrap();
    reloaded.apply_adapter(saved.path()).unwrap();
    assert_eq!(reloaded.predict_logits(&encoded).unwrap(), after);
    // The base is reused for the next fold: a fresh adapter predicts as the untrained one.
    reloaded.start_adapter(11).unwrap();
    assert_eq!(reloaded.predict_logits(&encoded).unwrap(), before);
}

/// A causal LM's folder (no `score` head, the usual download) loads with a head drawn from a
/// fixed seed, as transformers draws one.
#[test]
fn a_folder_without_a_head_gets_one_drawn() {
    let source = fixture("tiny-llm-llama");
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    let mut tensors =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.remove("score.weight").is_some());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();

    let config = small_config();
    let (member, note) = LlmMember::load(dir.path(), &Device::Cpu, &config).unwrap();
    assert!(!member.model().head_in_folder());
    assert!(
        note.unwrap().contains("padding with the EOS token 1"),
        "llama's fixture has no pad token"
    );
    let (pairs, _) = battles(2);
    let logits = member
        .predict_logits(&member.encode(&pairs).unwrap())
        .unwrap();
    assert!(logits.iter().flatten().all(|l| l.is_finite()));
    let (again, _) = LlmMember::load(dir.path(), &Device::Cpu, &config).unwrap();
    assert_eq!(
        again
            .predict_logits(&again.encode(&pairs).unwrap())
            .unwrap(),
        logits
    );
    let full = DecoderClassifier::load(&source, &Device::Cpu, DType::F32).unwrap();
    assert!(full.head_in_folder());
}

/// The training-memory estimate grows with the sequence length and shrinks with gradient
/// checkpointing; the adapter's optimizer state is counted, the frozen base's is not.
#[test]
fn the_memory_estimate_follows_length_and_checkpointing() {
    let estimate = |checkpoint: bool, repeat: usize| {
        let mut config = small_config();
        config.training.max_len = 512;
        // Prediction one row (two orders) at a time: training's activations set the figure.
        config.training.eval_batch_size = 1;
        config.training.gradient_checkpointing = checkpoint;
        let (mut member, _) =
            LlmMember::load(&fixture("tiny-llm-qwen2"), &Device::Cpu, &config).unwrap();
        member.start_adapter(1).unwrap();
        let pairs: Vec<ResponsePair> = (0..4)
            .map(|i| ResponsePair {
                prompt: format!("question {i}"),
                response_a: "a b c ".repeat(repeat),
                response_b: "d e f ".repeat(repeat),
            })
            .collect();
        let encoded: Vec<EncodedPair> = member.encode(&pairs).unwrap();
        let trained: usize = member
            .model()
            .trainable()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        (
            member.training_memory(FoldRows::of(&encoded, &encoded)),
            trained,
        )
    };
    let (short, trained) = estimate(false, 2);
    let (long, _) = estimate(false, 40);
    let (long_checkpointed, _) = estimate(true, 40);
    assert_eq!(short.optimizer, 8 * trained as u64);
    assert!(long.activations > short.activations);
    assert!(long_checkpointed.activations < long.activations);
}

/// The 8-bit base read block by block from the files is the 8-bit base quantized after a
/// dense load, bit for bit, in every family and both loading precisions, at the same bytes.
#[test]
fn eight_bit_weights_quantized_as_read_equal_those_quantized_after_loading() {
    let ids = vec![vec![5u32, 17, 300, 42, 9, 1], vec![7u32, 250, 3, 0, 0, 0]];
    let mask = vec![vec![1u32; 6], vec![1, 1, 1, 0, 0, 0]];
    for family in ["tiny-llm-gemma2", "tiny-llm-qwen2", "tiny-llm-llama"] {
        for dtype in [DType::F32, DType::BF16] {
            let read =
                DecoderClassifier::load_8_bit(&fixture(family), &Device::Cpu, dtype).unwrap();
            let mut after = DecoderClassifier::load(&fixture(family), &Device::Cpu, dtype).unwrap();
            after.quantize_base().unwrap();
            assert_eq!(
                read.weight_bytes(),
                after.weight_bytes(),
                "{family} {dtype:?}"
            );
            let logits = |model: &DecoderClassifier| -> Vec<u32> {
                let values = model.logits(&ids, &mask).unwrap();
                let values = values.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
                values
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(logits(&read), logits(&after), "{family} {dtype:?}");
            let dense = DecoderClassifier::load(&fixture(family), &Device::Cpu, dtype).unwrap();
            assert_ne!(
                logits(&read),
                logits(&dense),
                "{family} {dtype:?}: not quantized?"
            );
        }
    }
}

/// What a folder or adapter cannot be used for is refused naming the file: a head of another
/// task (id2label of 2 classes), a missing tensor, and an adapter without a head on a base
/// without one (its head would be random).
#[test]
fn unusable_folders_and_adapters_are_refused_naming_the_file() {
    let source = fixture("tiny-llm-qwen2");
    let config = small_config();
    let copy = |edit: &dyn Fn(&Path)| {
        let dir = tempfile::tempdir().unwrap();
        for name in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
        }
        edit(dir.path());
        dir
    };
    let error = |dir: &Path| match LlmMember::load(dir, &Device::Cpu, &config) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };

    let two_classes = copy(&|dir| {
        let path = dir.join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["id2label"] = serde_json::json!({"0": "NEGATIVE", "1": "POSITIVE"});
        std::fs::write(&path, json.to_string()).unwrap();
    });
    let message = error(two_classes.path());
    assert!(
        message.contains("config.json: id2label names 2 classes"),
        "{message}"
    );

    let without = |name: &'static str| {
        move |dir: &Path| {
            let path = dir.join("model.safetensors");
            let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            assert!(tensors.remove(name).is_some(), "{name}");
            candle_core::safetensors::save(&tensors, &path).unwrap();
        }
    };
    let missing = copy(&without("model.layers.1.mlp.up_proj.weight"));
    let message = error(missing.path());
    assert!(
        message.contains("model.safetensors: ") && message.contains("model.layers.1.mlp.up_proj"),
        "{message}"
    );

    // A headless base with an adapter saved without its head.
    let headless = copy(&without("score.weight"));
    let (mut member, _) = LlmMember::load(headless.path(), &Device::Cpu, &config).unwrap();
    member.start_adapter(1).unwrap();
    let adapter = tempfile::tempdir().unwrap();
    member.save_adapter(adapter.path()).unwrap();
    let weights = adapter.path().join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    tensors.retain(|name, _| !name.ends_with("score.weight"));
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let message = member
        .apply_adapter(adapter.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("the adapter has no score head, and the base"),
        "{message}"
    );
}

/// Over-long CJK and emoji fields (many byte tokens per character, merges across every cut)
/// at 20 tokens above the least `max_len`: every row of every family, in both answer orders,
/// fits `max_len` and ends with the template's own text, never a piece of an answer.
#[test]
fn the_template_survives_every_cut() {
    let texts = [
        "这是一个很长的中文回答，包含许多不同的汉字和标点符号。".repeat(12),
        "😀🎉🚀 emoji ✨🔥 mixed with ASCII 👍🏽 and 🇯🇵 flags ".repeat(10),
        "日本語のテキストと한국어 텍스트가 섞여 있습니다…".repeat(15),
    ];
    for family in ["tiny-llm-gemma2", "tiny-llm-qwen2", "tiny-llm-llama"] {
        let mut config = small_config();
        config.training.max_len = 1000;
        let (member, _) = LlmMember::load(&fixture(family), &Device::Cpu, &config).unwrap();
        let least = match LlmMember::load(&fixture(family), &Device::Cpu, &{
            let mut small = config.clone();
            small.training.max_len = 1;
            small
        }) {
            Ok(_) => panic!("max_len 1 loaded"),
            Err(e) => {
                let message = e.to_string();
                let at_least = message.split("at least ").nth(1).unwrap();
                at_least
                    .split(',')
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            }
        };
        config.training.max_len = least + 20;
        let (member_short, _) = LlmMember::load(&fixture(family), &Device::Cpu, &config).unwrap();
        let tokenizer =
            tokenizers::Tokenizer::from_file(fixture(family).join("tokenizer.json")).unwrap();
        let ending = "# Which response is better?";
        for (i, prompt) in texts.iter().enumerate() {
            let pair = ResponsePair {
                prompt: prompt.clone(),
                response_a: texts[(i + 1) % 3].clone(),
                response_b: texts[(i + 2) % 3].clone(),
            };
            let encoded = &member_short.encode(std::slice::from_ref(&pair)).unwrap()[0];
            for row in [&encoded.as_given[0], &encoded.swapped[0]] {
                assert!(row.len() <= least + 20, "{family}: {} tokens", row.len());
                let text = tokenizer.decode(row, true).unwrap();
                assert!(text.trim_end().ends_with(ending), "{family}: …{text}");
            }
            // Long enough for everything, nothing is cut.
            let whole = &member.encode(&[pair]).unwrap()[0];
            assert!(whole.as_given[0].len() > least + 20, "{family}");
        }
    }
}
