//! The classifier against Hugging Face's `*ForSequenceClassification` on the tiny random
//! fixtures of scripts/make_tiny_llm.py: the same logits within 1e-4 in f32, on right- and
//! left-padded batches, with the answers in both orders. The fixtures exercise each family's
//! own parts: Gemma-2's sliding window (shorter than the rows), soft-capping,
//! query_pre_attn_scalar and (1 + w) norms; Qwen2's q/k/v biases and rope_theta; Llama-3's
//! RoPE scaling.
use candle_core::{DType, Device};
use llm::{rope_inverse_frequencies, DecoderClassifier, Family};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("tiny-llm-expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn rows(value: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn assert_close(ours: &[Vec<f32>], theirs: &serde_json::Value, what: &str) {
    let theirs: Vec<Vec<f32>> = serde_json::from_value(theirs.clone()).unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (row, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4, "{what}, row {row}: {a:?} vs {b:?}");
        }
    }
}

/// The adapter fixture's base model (Qwen2) in `dtype`.
fn lora_base(case: &serde_json::Value, dtype: DType) -> DecoderClassifier {
    let dir = fixtures().join(case["base_model_dir"].as_str().unwrap());
    DecoderClassifier::load(&dir, &Device::Cpu, dtype).unwrap()
}

/// The adapter fixture's folder.
fn lora_dir(case: &serde_json::Value) -> PathBuf {
    fixtures().join(case["adapter_dir"].as_str().unwrap())
}

/// The base with peft's adapter applied.
fn lora_adapted(case: &serde_json::Value, dtype: DType) -> DecoderClassifier {
    let mut model = lora_base(case, dtype);
    model.apply_adapter(&lora_dir(case)).unwrap();
    model
}

#[test]
fn logits_match_hugging_face_for_every_family_and_padding_side() {
    let expected = expected();
    for (name, family) in [
        ("gemma2", Family::Gemma2),
        ("qwen2", Family::Qwen2),
        ("llama", Family::Llama),
    ] {
        let case = &expected["families"][name];
        let dir = fixtures().join(case["model_dir"].as_str().unwrap());
        let model = DecoderClassifier::load(&dir, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(model.config().family, family);
        let inv_freq = rope_inverse_frequencies(model.config());
        let theirs: Vec<f32> = serde_json::from_value(case["rope_inv_freq"].clone()).unwrap();
        for (a, b) in inv_freq.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                "{name} inv_freq {a} vs {b}"
            );
        }
        for batch in ["right", "left"] {
            let batch_case = &case[batch];
            let logits = model
                .logits(
                    &rows(&batch_case["input_ids"]),
                    &rows(&batch_case["attention_mask"]),
                )
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_close(
                &logits,
                &batch_case["logits"],
                &format!("{name}, {batch} padding"),
            );
        }
        let swapped = &case["swapped"];
        if let Some(batch) = swapped.get("right") {
            let logits = model
                .logits(&rows(&batch["input_ids"]), &rows(&batch["attention_mask"]))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_close(&logits, &batch["logits"], &format!("{name}, swapped"));
        }
    }
}

#[test]
fn bad_folders_are_named() {
    let empty = tempfile::tempdir().unwrap();
    let error = DecoderClassifier::load(empty.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(error.ends_with("missing config.json"), "{error}");
    // A sharded folder whose index names a shard that is not there.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("tiny-llm-qwen2/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let error = DecoderClassifier::load(dir.path(), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("model-00002-of-00002.safetensors: missing a shard"),
        "{error}"
    );
}

/// A PEFT LoRA adapter (r 4, alpha 8, every projection, the head saved in full) applied to the
/// Qwen2 fixture gives peft's logits; without it, the base logits.
#[test]
fn a_peft_adapter_gives_peft_logits() {
    let expected = expected();
    let case = &expected["lora"];
    let mut model = lora_base(case, DType::F32);
    let batch = &case["right"];
    let (ids, mask) = (rows(&batch["input_ids"]), rows(&batch["attention_mask"]));
    let logits =
        |model: &DecoderClassifier| model.logits(&ids, &mask).unwrap().to_vec2::<f32>().unwrap();
    assert_close(&logits(&model), &case["base"]["right"], "base");
    let adapter = model.apply_adapter(&lora_dir(case)).unwrap();
    assert_eq!((adapter.r, adapter.alpha, adapter.scale()), (4, 8.0, 2.0));
    assert_eq!(adapter.target_modules.len(), 7);
    assert_close(
        &logits(&model),
        &batch["logits"],
        "with the adapter, right padding",
    );
    let left = &case["left"];
    let left_logits = model
        .logits(&rows(&left["input_ids"]), &rows(&left["attention_mask"]))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_close(
        &left_logits,
        &left["logits"],
        "with the adapter, left padding",
    );
}

/// Adapters that do not fit the model are refused, naming the file and what is wrong.
#[test]
fn mismatched_adapters_are_named() {
    let qwen = fixtures().join("tiny-llm-qwen2");
    let adapter = fixtures().join("tiny-llm-qwen2-lora");
    let copy = |edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut config);
        std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
        std::fs::copy(
            adapter.join("adapter_model.safetensors"),
            dir.path().join("adapter_model.safetensors"),
        )
        .unwrap();
        dir
    };
    let error_of = |dir: &Path| {
        let mut model = DecoderClassifier::load(&qwen, &Device::Cpu, DType::F32).unwrap();
        model.apply_adapter(dir).err().unwrap().to_string()
    };
    // Another rank than the weights have.
    let dir = copy(&|c| c["r"] = serde_json::json!(8));
    let error = error_of(dir.path());
    assert!(
        error.contains("adapter_model.safetensors: ")
            && error.contains("lora_A.weight has shape [4, ")
            && error.ends_with("(r = 8)"),
        "{error}"
    );
    // Fewer target modules than the file holds.
    let dir = copy(&|c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj"]));
    let error = error_of(dir.path());
    assert!(
        error.contains("tensors the model has no place for"),
        "{error}"
    );
    // DoRA, which the member does not compute.
    let dir = copy(&|c| c["use_dora"] = serde_json::json!(true));
    let error = error_of(dir.path());
    assert!(
        error.contains("adapter_config.json: use_dora = true (DoRA) is not supported"),
        "{error}"
    );
    // The adapter of a model with another shape: the Qwen2 adapter (2 layers) on the Gemma-2
    // fixture (3 layers).
    let mut gemma = DecoderClassifier::load(
        &fixtures().join("tiny-llm-gemma2"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let error = gemma.apply_adapter(&adapter).err().unwrap().to_string();
    assert!(
        error.contains("adapter_model.safetensors: no base_model.model.model.layers.2."),
        "{error}"
    );
}

/// The encoder puts the battle in the template and tokenizes it as Hugging Face's tokenizer
/// does (the fixtures' ids, BOS from the post-processor); cut to a short `max_len`, every row
/// fits, keeps the start of each field and ends with the end of response_b.
#[test]
fn battles_are_tokenized_as_the_reference_and_cut_to_max_len() {
    use llm::{Padding, PairEncoder, Template};
    use neural::{ResponsePair, SegmentBudget};
    let expected = expected();
    let template = Template::parse(expected["template"].as_str().unwrap()).unwrap();
    let pairs: Vec<ResponsePair> = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ResponsePair {
            prompt: c["prompt"].as_str().unwrap().to_owned(),
            response_a: c["response_a"].as_str().unwrap().to_owned(),
            response_b: c["response_b"].as_str().unwrap().to_owned(),
        })
        .collect();
    for name in ["gemma2", "llama"] {
        let case = &expected["families"][name];
        let dir = fixtures().join(case["model_dir"].as_str().unwrap());
        let model = DecoderClassifier::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let (pad, is_eos) = model.config().padding_id().unwrap();
        assert_eq!(is_eos, name == "llama", "{name}: the pad fallback");
        let encoder =
            PairEncoder::new(&dir, template.clone(), SegmentBudget::default(), pad).unwrap();
        let ids: Vec<Vec<u32>> = pairs
            .iter()
            .map(|p| encoder.encode(p, 4096).unwrap()[0].clone())
            .collect();
        assert_eq!(ids, rows(&case["ids"]), "{name}");
        // The second order is the battle with its answers exchanged, cut or not.
        for max_len in [4096, 40] {
            for pair in &pairs {
                let [_, swapped] = encoder.encode(pair, max_len).unwrap();
                assert_eq!(
                    swapped,
                    encoder.encode(&pair.swapped(), max_len).unwrap()[0]
                );
            }
        }
        // Padded as the reference's batches.
        let (padded, mask) = encoder.pad(&ids, Padding::Left);
        assert_eq!(padded, rows(&case["left"]["input_ids"]), "{name}");
        assert_eq!(mask, rows(&case["left"]["attention_mask"]), "{name}");
        // Cut to 40 tokens: fits, and the row still ends as the text does.
        for (pair, full) in pairs.iter().zip(&ids) {
            let [cut, _] = encoder.encode(pair, 40).unwrap();
            assert!(cut.len() <= 40, "{name}: {} tokens", cut.len());
            if full.len() > 40 {
                assert_eq!(cut.last(), full.last(), "{name}: the last token is kept");
                assert_eq!(cut[..8], full[..8], "{name}: the head is kept");
            }
        }
    }
}

/// Training's first step against PyTorch + PEFT (the fixture's figures): the loss of the
/// adapted model on the right-padded batch, and the gradients of layer 0's q_proj LoRA A and B
/// and of the head, within 1e-4 relative to their size. Only the adapter and the head are
/// variables: the base weights get no gradient.
/// The fixture's tracked gradients: its name for each, and the variable's.
const TRACKED: [(&str, &str); 3] = [
    (
        "layer0_q_proj_lora_A",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    ),
    (
        "layer0_q_proj_lora_B",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    ),
    ("score", "base_model.model.score.weight"),
];

/// The adapted model in `dtype`, its mean cross-entropy on the fixture's right-padded batch
/// and labels, and that loss's gradients.
fn training_step(
    case: &serde_json::Value,
    dtype: DType,
) -> (DecoderClassifier, f64, candle_core::backprop::GradStore) {
    let model = lora_adapted(case, dtype);
    let batch = &case["right"];
    let logits = model
        .training_logits(
            &rows(&batch["input_ids"]),
            &rows(&batch["attention_mask"]),
            None,
            false,
        )
        .unwrap();
    let labels: Vec<u32> = serde_json::from_value(case["training"]["labels"].clone()).unwrap();
    let labels = candle_core::Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    (model, loss.to_scalar::<f32>().unwrap() as f64, grads)
}

/// The variable named `key` among the model's trainable ones.
fn variable<'a>(
    trainable: &'a [(String, &'a candle_core::Var)],
    key: &str,
) -> &'a candle_core::Var {
    trainable
        .iter()
        .find(|(name, _)| name == key)
        .unwrap_or_else(|| panic!("no variable {key}"))
        .1
}

/// `grads`' value for the variable `key`, flattened.
fn gradient(
    trainable: &[(String, &candle_core::Var)],
    grads: &candle_core::backprop::GradStore,
    key: &str,
) -> Vec<f32> {
    grads
        .get(variable(trainable, key).as_tensor())
        .unwrap_or_else(|| panic!("no gradient for {key}"))
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn figures(value: &serde_json::Value) -> Vec<f32> {
    serde_json::from_value(value["values"].clone()).unwrap()
}

#[test]
fn lora_gradients_match_pytorch_and_peft() {
    let expected = expected();
    let case = &expected["lora"];
    let training = &case["training"];
    let (model, loss, grads) = training_step(case, DType::F32);
    assert!((loss - training["loss"].as_f64().unwrap()).abs() < 1e-5);
    let trainable = model.trainable();
    // 2 layers × 7 projections × (A, B), and the head.
    assert_eq!(trainable.len(), 29);
    for (fixture_name, key) in TRACKED {
        let figures_of = &training["grads"][fixture_name];
        let shape: Vec<usize> = serde_json::from_value(figures_of["shape"].clone()).unwrap();
        assert_eq!(variable(&trainable, key).as_tensor().dims(), shape, "{key}");
        assert_close_flat(
            &gradient(&trainable, &grads, key),
            &figures(figures_of),
            key,
        );
    }
    // One step of the shared AdamW over every trainable variable gives torch's
    // AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01).
    let config = neural::TrainingConfig {
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_eps: 1e-8,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut optimizer = neural::AdamW::new(&config);
    for (name, var) in &trainable {
        let grad = grads.get(var.as_tensor()).unwrap();
        optimizer.step(name, var, grad, (1.0, 1e-3), true).unwrap();
    }
    for (fixture_name, key) in TRACKED {
        let ours = variable(&trainable, key)
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let theirs = figures(&training["params_after"][fixture_name]);
        assert_close_flat(&ours, &theirs, &format!("{key} after one AdamW step"));
    }
}

/// Trained in bf16 and f16 (the base cast, the adapters, norms, softmax and head in f32), the
/// loss and the adapter's and head's gradients stay as close to the f32 ones as PyTorch + PEFT's
/// under `torch.autocast` (which also runs the adapters and the head in half precision). On
/// these tiny random models half precision moves the loss by up to 0.06 (autocast bf16), so the
/// test compares each one's error from f32, relative to the f32 gradient's largest magnitude:
/// a wrong scale, sign or dtype path in a backward pass shows as an error far above theirs.
#[test]
fn half_precision_gradients_err_as_much_as_autocast() {
    let expected = expected();
    let case = &expected["lora"];
    let training = &case["training"];
    let exact_loss = training["loss"].as_f64().unwrap();
    for (dtype, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        let reference = &training["autocast"][name];
        let (model, loss, grads) = training_step(case, dtype);
        let their_loss = reference["loss"].as_f64().unwrap();
        println!(
            "{name} loss: ours {:.2e} from f32, autocast {:.2e}",
            (loss - exact_loss).abs(),
            (their_loss - exact_loss).abs()
        );
        assert!(
            (loss - exact_loss).abs() <= 2.0 * (their_loss - exact_loss).abs() + 1e-3,
            "{name}: loss {loss} against f32 {exact_loss} and autocast {their_loss}"
        );
        let trainable = model.trainable();
        for (fixture_name, key) in TRACKED {
            let exact = figures(&training["grads"][fixture_name]);
            let theirs = figures(&reference["grads"][fixture_name]);
            let ours = gradient(&trainable, &grads, key);
            let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
            let error = |values: &[f32]| {
                values
                    .iter()
                    .zip(&exact)
                    .fold(0f32, |m, (v, e)| m.max((v - e).abs()))
                    / scale
            };
            let apart = ours
                .iter()
                .zip(&theirs)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            println!(
                "{name} {fixture_name}: ours {:.2e} from f32, autocast {:.2e}, the two apart \
                 {apart:.2e} (of the largest |gradient| {scale:.2e})",
                error(&ours),
                error(&theirs)
            );
            assert!(
                error(&ours) <= 2.0 * error(&theirs) + 1e-2,
                "{name} {key}: {ours:?} against f32 {exact:?} and autocast {theirs:?}"
            );
        }
    }
}

/// Equal within 1e-4 of the largest magnitude (at least 1e-3).
fn assert_close_flat(ours: &[f32], theirs: &[f32], what: &str) {
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (a, b) in ours.iter().zip(theirs) {
        assert!(
            (a - b).abs() <= 1e-4 * scale.max(1e-3),
            "{what}: {a} vs {b}"
        );
    }
}

/// A fresh adapter changes nothing (B starts at zero); trained a step, saved in PEFT's format
/// with PEFT's key names, and applied to a fresh copy of the base, it gives the same logits.
#[test]
fn adapters_start_neutral_and_survive_a_save_and_load() {
    use llm::LoraSpec;
    let expected = expected();
    let case = &expected["lora"];
    let base_dir = fixtures().join(case["base_model_dir"].as_str().unwrap());
    let batch = &case["right"];
    let (ids, mask) = (rows(&batch["input_ids"]), rows(&batch["attention_mask"]));
    let mut model = DecoderClassifier::load(&base_dir, &Device::Cpu, DType::F32).unwrap();
    let before = model.logits(&ids, &mask).unwrap().to_vec2::<f32>().unwrap();
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let spec = LoraSpec {
        r: 4,
        alpha: 8.0,
        target_modules: targets.map(str::to_owned).to_vec(),
        use_rslora: false,
        dropout: 0.0,
    };
    model.add_lora(spec, 7).unwrap();
    let untrained = model.logits(&ids, &mask).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(before, untrained, "an untrained adapter changed the logits");
    // One AdamW step moves B off zero.
    let labels = candle_core::Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(
        &model.training_logits(&ids, &mask, None, false).unwrap(),
        &labels,
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let mut optimizer = neural::AdamW::new(&neural::TrainingConfig::default());
    for (name, var) in model.trainable() {
        optimizer
            .step(
                &name,
                var,
                grads.get(var.as_tensor()).unwrap(),
                (1.0, 1e-2),
                true,
            )
            .unwrap();
    }
    let trained = model.logits(&ids, &mask).unwrap().to_vec2::<f32>().unwrap();
    assert_ne!(trained, before);
    let saved = tempfile::tempdir().unwrap();
    model.save_adapter(saved.path()).unwrap();
    // PEFT's key names, as peft itself wrote them for the fixture adapter.
    let keys: Vec<String> = candle_core::safetensors::load(
        saved.path().join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_keys()
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect();
    let mut peft_keys: Vec<String> = case["safetensors_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    peft_keys.sort();
    assert_eq!(keys, peft_keys);
    let mut reloaded = DecoderClassifier::load(&base_dir, &Device::Cpu, DType::F32).unwrap();
    reloaded.apply_adapter(saved.path()).unwrap();
    assert_eq!(
        reloaded
            .logits(&ids, &mask)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        trained
    );
}

/// 8-bit base weights (Q8_0 projections, an 8-bit embedding table) with the PEFT adapter on
/// top: about half the bytes of f16, and
/// logits and log loss close to the f32 and the f16 model's (the figures are printed for
/// BENCHMARKS.md).
#[test]
fn eight_bit_base_weights_cost_little() {
    let expected = expected();
    let case = &expected["lora"];
    let (exact, half, mut eight_bit) = (
        lora_adapted(case, DType::F32),
        lora_adapted(case, DType::F16),
        lora_adapted(case, DType::F32),
    );
    eight_bit.quantize_base().unwrap();
    let ratio = eight_bit.projection_bytes() as f64 / half.projection_bytes() as f64;
    // The embedding table too: all the base weights.
    let weights_ratio = eight_bit.weight_bytes() as f64 / half.weight_bytes() as f64;
    let labels = candle_core::Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    let loss = |l: &candle_core::Tensor| {
        candle_nn::loss::cross_entropy(l, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let largest = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (mut worst_logit, mut worst_loss, mut loss_against_f16) = (0f32, 0f32, 0f32);
    for side in ["right", "left"] {
        let batch = &case[side];
        let (ids, mask) = (rows(&batch["input_ids"]), rows(&batch["attention_mask"]));
        let run = |model: &DecoderClassifier| model.logits(&ids, &mask).unwrap();
        let (a, h, q) = (run(&exact), run(&half), run(&eight_bit));
        worst_logit = worst_logit.max(largest(&a, &q));
        worst_loss = worst_loss.max((loss(&a) - loss(&q)).abs());
        loss_against_f16 = loss_against_f16.max((loss(&h) - loss(&q)).abs());
    }
    println!(
        "8-bit base: projection bytes {ratio:.3}x of f16, all base weights {weights_ratio:.3}x; \
         against f32 the logits move by up to \
         {worst_logit:.2e} and the log loss by {worst_loss:.2e}; against f16 the log loss by \
         {loss_against_f16:.2e} (3 rows)"
    );
    assert!(
        ratio <= 0.55 && weights_ratio <= 0.55,
        "{ratio} {weights_ratio}"
    );
    // Training through them is refused: their product has no backward pass.
    let batch = &case["right"];
    let error = eight_bit
        .training_logits(
            &rows(&batch["input_ids"]),
            &rows(&batch["attention_mask"]),
            None,
            false,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("8-bit base weights are for prediction"),
        "{error}"
    );
    // Measured: 0.136 and 0.052 (0.059 and 0.046 with the embedding table left in f32). The
    // tiny model's random weights are large (std 0.3) and candle's CPU Q8_0 product quantizes
    // the activations to 8 bits too; a wrong layout or scale moves the logits by whole units.
    assert!(
        worst_logit < 0.15 && worst_loss < 0.1,
        "{worst_logit} {worst_loss}"
    );
}

/// In bf16 and f16 (the base cast; norms, softmax and the head in f32) the logits move away
/// from the f32 ones by about as much as Hugging Face's do when its model is cast the same way.
/// On these tiny random models (weights of std 0.3) that is far more than on real ones:
/// Hugging Face's own bf16 logits are up to 0.17 from its f32 ones, so the two half-precision
/// implementations cannot agree within 2e-2 here, and the test compares the errors instead.
#[test]
fn half_precision_errs_as_much_as_hugging_faces() {
    let expected = expected();
    let largest = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    };
    for name in ["gemma2", "qwen2", "llama"] {
        let case = &expected["families"][name];
        let dir = fixtures().join(case["model_dir"].as_str().unwrap());
        let batch = &case["right"];
        let exact: Vec<Vec<f32>> = serde_json::from_value(batch["logits"].clone()).unwrap();
        for (dtype, key) in [(DType::BF16, "logits_bf16"), (DType::F16, "logits_f16")] {
            let model = DecoderClassifier::load(&dir, &Device::Cpu, dtype).unwrap();
            let ours = model
                .logits(&rows(&batch["input_ids"]), &rows(&batch["attention_mask"]))
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let theirs: Vec<Vec<f32>> = serde_json::from_value(case[key].clone()).unwrap();
            let (our_error, their_error) = (largest(&ours, &exact), largest(&theirs, &exact));
            println!(
                "{name} {key}: ours {our_error:.2e} from f32, Hugging Face's {their_error:.2e}, \
                 the two apart {:.2e}",
                largest(&ours, &theirs)
            );
            assert!(
                our_error <= 2.0 * their_error + 1e-2,
                "{name} {key}: {ours:?} vs f32 {exact:?}"
            );
        }
    }
}
