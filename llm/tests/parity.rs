//! The classifier against Hugging Face's `*ForSequenceClassification` on the tiny random
//! fixtures of scripts/make_tiny_llm.py: the same logits within 1e-4 in f32, on right- and
//! left-padded batches, with the answers in both orders. The fixtures exercise each family's
//! own parts: Gemma-2's sliding window (shorter than the rows), soft-capping,
//! query_pre_attn_scalar and (1 + w) norms; Qwen2's q/k/v biases and rope_theta; Llama-3's
//! RoPE scaling.
use candle_core::Device;
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
        let model = DecoderClassifier::load(&dir, &Device::Cpu).unwrap();
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
    let error = DecoderClassifier::load(empty.path(), &Device::Cpu)
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
    let error = DecoderClassifier::load(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("model-00002-of-00002.safetensors: missing a shard"),
        "{error}"
    );
}
