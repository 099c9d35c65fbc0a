//! The sentence encoder against Hugging Face on the tiny random BERT that
//! `scripts/make_tiny_bert.py` makes (tests/fixtures/tiny-bert), and the embedding cache.
use encoder::{embed_cached, SentenceEncoder};
use serde::Deserialize;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bert")
}

#[derive(Deserialize)]
struct Expected {
    max_tokens: usize,
    texts: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn expected() -> Expected {
    let path = fixture().with_file_name("tiny-bert-expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn embeddings_match_hugging_face() {
    let expected = expected();
    // Batches of 2: padding inside a batch must not change a text's embedding.
    let encoder = SentenceEncoder::load(&fixture(), expected.max_tokens, 2).unwrap();
    let texts: Vec<&str> = expected.texts.iter().map(String::as_str).collect();
    let mut progress = Vec::new();
    let got = encoder.embed(&texts, |done| progress.push(done)).unwrap();
    assert_eq!(progress, [2, 4, 5]);
    for ((text, got), want) in texts.iter().zip(&got).zip(&expected.embeddings) {
        let error = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(error < 1e-5, "{text:?}: off by {error}");
        let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

#[test]
fn the_cache_embeds_each_distinct_text_once_and_nothing_on_a_second_run() {
    let encoder = SentenceEncoder::load(&fixture(), 16, 4).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let texts = [
        "a prompt",
        "answer one",
        "a prompt",
        "answer two",
        "answer one",
    ];
    let (first, stats) = embed_cached(&encoder, Some(cache.path()), &texts, |_, _| {}).unwrap();
    assert_eq!(
        (
            stats.texts,
            stats.distinct,
            stats.embedded,
            stats.from_cache
        ),
        (5, 3, 3, 0)
    );
    assert_eq!(first.vector(0), first.vector(2));
    let mut calls = 0;
    let (second, stats) =
        embed_cached(&encoder, Some(cache.path()), &texts, |_, _| calls += 1).unwrap();
    assert_eq!(
        (stats.embedded, stats.from_cache, calls),
        (0, 3, 0),
        "no model call"
    );
    for i in 0..texts.len() {
        assert_eq!(first.vector(i), second.vector(i), "text {i} bit for bit");
    }
    // A new text is embedded alone and appended; a torn record from a crash is dropped.
    let file = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&file, bytes).unwrap();
    let (_, stats) = embed_cached(
        &encoder,
        Some(cache.path()),
        &["answer three", "a prompt"],
        |_, _| {},
    )
    .unwrap();
    assert_eq!((stats.embedded, stats.from_cache), (1, 1));
    let record = 8 + 4 * encoder.dim() as u64;
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 4 * record);
}

#[test]
fn bad_encoder_folders_are_named_with_the_file_at_fault() {
    let load = |dir: &Path| match SentenceEncoder::load(dir, 16, 4) {
        Err(e) => e.to_string(),
        Ok(_) => "loaded".into(),
    };
    let empty = tempfile::tempdir().unwrap();
    assert!(load(&empty.path().join("nope")).contains("missing encoder folder"));
    assert!(load(empty.path()).contains("config.json: missing the model configuration"));

    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("1_Pooling")).unwrap();
    for file in ["config.json", "model.safetensors", "1_Pooling/config.json"] {
        std::fs::copy(fixture().join(file), copy.path().join(file)).unwrap();
    }
    assert!(load(copy.path()).contains("tokenizer.json: missing the tokenizer"));
    std::fs::write(copy.path().join("tokenizer.json"), "{ not json").unwrap();
    assert!(load(copy.path()).contains("tokenizer.json: "));
    std::fs::copy(
        fixture().join("tokenizer.json"),
        copy.path().join("tokenizer.json"),
    )
    .unwrap();
    assert_eq!(load(copy.path()), "loaded");

    std::fs::write(
        copy.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    assert!(load(copy.path()).contains("several pooling modes"));
    std::fs::write(
        copy.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true}"#,
    )
    .unwrap();
    assert_eq!(load(copy.path()), "loaded");

    std::fs::write(copy.path().join("model.safetensors"), b"garbage").unwrap();
    assert!(load(copy.path()).contains("model.safetensors: "));
}
