//! End-to-end checks on real Chatbot Arena rows and hand-made battles: decoding, the exact
//! position-swap symmetry, CSR invariants and column naming.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use features::{
    parse_turns, Battle, BattleEmbeddings, CsrMatrix, Extractor, FeatureConfig, FeatureTable,
    Orientation,
};

/// `<workspace root>/../shared/arena-sample`, seen from the main checkout or a worktree. A
/// user's clone has no `../shared`: the tests that need it then say so and pass. CI has it,
/// so there a missing folder fails.
fn arena_dir() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = [
        manifest.join("../../shared/arena-sample"),
        manifest.join("../shared/arena-sample"),
    ]
    .into_iter()
    .find(|dir| dir.join("train.csv").exists());
    if dir.is_none() {
        let missing = "the Kaggle sample rows in ../shared/arena-sample next to the workspace";
        assert!(std::env::var_os("CI").is_none(), "CI needs {missing}");
        eprintln!("skipped: needs {missing}");
    }
    dir
}

/// (prompt, response_a, response_b) raw fields of every row of an arena CSV file.
fn raw_fields(file: &str) -> Option<Vec<[String; 3]>> {
    let mut reader = csv::Reader::from_path(arena_dir()?.join(file)).expect("arena CSV");
    let headers = reader.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let columns = [column("prompt"), column("response_a"), column("response_b")];
    let rows = reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            columns.map(|c| record[c].to_string())
        })
        .collect();
    Some(rows)
}

fn arena_battles() -> Option<Vec<Battle>> {
    let battles = raw_fields("train.csv")?
        .into_iter()
        .chain(raw_fields("test.csv")?)
        .map(|[prompt, a, b]| Battle {
            prompt: parse_turns(&prompt).turns,
            response_a: parse_turns(&a).turns,
            response_b: parse_turns(&b).turns,
        })
        .collect();
    Some(battles)
}

/// A vocabulary small enough for 103 rows but with every kind of column present.
fn small_config() -> FeatureConfig {
    let mut config = FeatureConfig::default();
    config.tfidf.min_df = 2;
    config.tfidf.max_df = 1.0;
    config.tfidf.word_max_features = 500;
    config.tfidf.char_max_features = 500;
    // Every vocabulary entry becomes a difference column, so the swap tests cover them all.
    config.tfidf.word_diff_columns = 500;
    config.tfidf.char_diff_columns = 500;
    config
}

fn assert_bit_identical(left: &CsrMatrix, right: &CsrMatrix, context: &str) {
    assert_eq!(left.n_cols, right.n_cols, "{context}: n_cols");
    assert_eq!(left.indptr, right.indptr, "{context}: indptr");
    assert_eq!(left.indices, right.indices, "{context}: indices");
    let bits = |m: &CsrMatrix| m.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(left), bits(right), "{context}: values");
}

fn assert_csr_invariants(m: &CsrMatrix) {
    assert_eq!(m.indptr.first(), Some(&0));
    assert_eq!(*m.indptr.last().unwrap() as usize, m.values.len());
    assert_eq!(m.indices.len(), m.values.len());
    for (row, window) in m.indptr.windows(2).enumerate() {
        assert!(window[0] <= window[1], "indptr not monotone at row {row}");
        let indices = &m.indices[window[0] as usize..window[1] as usize];
        assert!(
            indices.windows(2).all(|w| w[0] < w[1]),
            "row {row}: indices not strictly increasing"
        );
        assert!(indices.iter().all(|&i| i >= 0 && (i as usize) < m.n_cols));
    }
    assert!(m.values.iter().all(|v| *v != 0.0 && v.is_finite()));
}

#[test]
fn every_arena_field_decodes_like_strict_json() {
    let mut fields = 0;
    for file in ["train.csv", "test.csv"] {
        let Some(rows) = raw_fields(file) else {
            return;
        };
        for row in rows {
            for raw in row {
                let parsed = parse_turns(&raw);
                // The sample has no nulls or lone surrogates, so strict JSON must agree.
                assert_eq!(parsed.issue, None, "{raw:.80}");
                let strict: Vec<String> = serde_json::from_str(&raw).unwrap();
                assert_eq!(parsed.turns, strict);
                assert!(!parsed.turns.is_empty());
                fields += 1;
            }
        }
    }
    assert_eq!(fields, (100 + 3) * 3);
}

#[test]
fn swapped_battle_equals_swapped_orientation_bit_for_bit() {
    let Some(battles) = arena_battles() else {
        return;
    };
    let extractor = Extractor::fit(&battles, &small_config()).unwrap();
    let table = extractor.transform(&battles, &[]).unwrap();
    let swapped_battles: Vec<Battle> = battles.iter().map(Battle::swapped).collect();
    let swapped_table = extractor.transform(&swapped_battles, &[]).unwrap();

    for (row, battle) in battles.iter().enumerate() {
        let one = extractor
            .transform(std::slice::from_ref(&battle.swapped()), &[])
            .unwrap();
        assert_bit_identical(
            &one.csr(&[0], Orientation::AsGiven),
            &table.csr(&[row], Orientation::Swapped),
            &format!("row {row}: transform(swapped) vs csr(Swapped)"),
        );
    }
    let all: Vec<usize> = (0..battles.len()).collect();
    assert_bit_identical(
        &swapped_table.csr(&all, Orientation::Swapped),
        &table.csr(&all, Orientation::AsGiven),
        "swapped table in Swapped orientation vs original as given",
    );
    // The swap must actually change something: A and B differ in real rows.
    assert_ne!(
        table.csr(&all, Orientation::AsGiven),
        table.csr(&all, Orientation::Swapped)
    );
}

#[test]
fn difference_columns_are_the_most_frequent_n_grams_only() {
    let Some(battles) = arena_battles() else {
        return;
    };
    let full = Extractor::fit(&battles, &small_config()).unwrap();
    let mut config = small_config();
    config.tfidf.word_diff_columns = 7;
    config.tfidf.char_diff_columns = 3;
    let capped = Extractor::fit(&battles, &config).unwrap();
    let names = capped.feature_names();
    let grams = |prefix: &str| {
        names
            .iter()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    let full_grams = |prefix: &str, n: usize| {
        full.feature_names()
            .iter()
            .filter(|n| n.starts_with(prefix))
            .take(n)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(grams("tfidf_w:"), full_grams("tfidf_w:", 7));
    assert_eq!(grams("tfidf_c:"), full_grams("tfidf_c:", 3));
    let table = capped.transform(&battles, &[]).unwrap();
    assert_eq!(table.n_cols(), names.len());
    let all: Vec<usize> = (0..battles.len()).collect();
    let csr = table.csr(&all, Orientation::AsGiven);
    assert!(csr.indices.iter().all(|&c| (c as usize) < names.len()));
    // The similarities still use the whole vocabularies: the same values as uncapped.
    let sim = names.iter().position(|n| n == "sim_word_tfidf_ab").unwrap();
    let full_csr = full
        .transform(&battles, &[])
        .unwrap()
        .csr(&all, Orientation::AsGiven);
    let value_at = |m: &CsrMatrix, row: usize| {
        let (start, end) = (m.indptr[row] as usize, m.indptr[row + 1] as usize);
        (start..end)
            .find(|&k| m.indices[k] as usize == sim)
            .map(|k| m.values[k])
    };
    for row in 0..battles.len() {
        assert_eq!(value_at(&csr, row), value_at(&full_csr, row), "row {row}");
    }
}

#[test]
fn names_match_columns_and_are_unique() {
    let Some(battles) = arena_battles() else {
        return;
    };
    let extractor = Extractor::fit(&battles, &small_config()).unwrap();
    let table = extractor.transform(&battles, &[]).unwrap();
    let names = extractor.feature_names();
    assert_eq!(names.len(), table.n_cols());
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "duplicate feature names");
    for expected in [
        "p_words",
        "a_words",
        "b_words",
        "diff_words",
        "logratio_words",
        "a_mtld",
        "a_prompt_overlap",
        "a_sim_word_tfidf_prompt",
        "sim_word_tfidf_ab",
        "sim_char_tfidf_ab",
        "jaccard_words_ab",
        "identical_ab",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
    let word_grams = names.iter().filter(|n| n.starts_with("tfidf_w:")).count();
    let char_grams = names.iter().filter(|n| n.starts_with("tfidf_c:")).count();
    assert_eq!((word_grams, char_grams), (500, 500));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("tfidf_w:") && n.contains(' ')),
        "bigrams"
    );
}

#[test]
fn csr_invariants_hold_in_both_orientations() {
    let Some(battles) = arena_battles() else {
        return;
    };
    let extractor = Extractor::fit(&battles, &small_config()).unwrap();
    let table = extractor.transform(&battles, &[]).unwrap();
    assert_eq!(table.n_rows(), battles.len());
    let rows: Vec<usize> = (0..battles.len()).rev().collect();
    for orientation in [Orientation::AsGiven, Orientation::Swapped] {
        let csr = table.csr(&rows, orientation);
        assert_eq!(csr.n_rows(), rows.len());
        assert_eq!(csr.n_cols, table.n_cols());
        assert_csr_invariants(&csr);
        let tfidf_nnz = csr
            .indices
            .iter()
            .filter(|&&c| extractor.feature_names()[c as usize].starts_with("tfidf_"))
            .count();
        assert!(tfidf_nnz > 0, "TF-IDF differences present");
    }
    // Stacking row blocks equals exporting them together.
    let parts = [
        table.csr(&rows[..40], Orientation::Swapped),
        table.csr(&rows[40..], Orientation::Swapped),
    ];
    assert_eq!(
        CsrMatrix::vstack(&parts),
        table.csr(&rows, Orientation::Swapped)
    );
}

fn turns(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| t.to_string()).collect()
}

/// Value of a named column in one exported row (0 when absent from the sparse row).
fn value(extractor: &Extractor, table: &FeatureTable, orientation: Orientation, name: &str) -> f32 {
    let column = extractor
        .feature_names()
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no column {name}")) as i32;
    let csr = table.csr(&[0], orientation);
    csr.indices
        .iter()
        .position(|&c| c == column)
        .map_or(0.0, |at| csr.values[at])
}

#[test]
fn hand_made_battle_has_the_expected_values() {
    let battle = Battle {
        prompt: turns(&["How do I boil an egg?"]),
        response_a: turns(&[
            "# Boiling\n\n1. Boil water.\n2. Add the egg.\n\n**Done** in 9 minutes!",
        ]),
        response_b: turns(&["I'm sorry, but as an AI I cannot help.", "Boil it."]),
    };
    let battles = [battle.clone(), battle.swapped()];
    let extractor = Extractor::fit(&battles, &FeatureConfig::default()).unwrap();
    let table = extractor.transform(&battles[..1], &[]).unwrap();
    let get = |name: &str| value(&extractor, &table, Orientation::AsGiven, name);
    let swapped = |name: &str| value(&extractor, &table, Orientation::Swapped, name);

    // Words (unicode_words, numbers included): A = boiling, 1, boil, water, 2, add, the, egg,
    // done, in, 9, minutes = 12. B = i'm, sorry, but, as, an, ai, i, cannot, help, boil, it = 11.
    assert_eq!(get("p_words"), 6.0);
    assert_eq!(get("a_words"), 12.0);
    assert_eq!(get("b_words"), 11.0);
    assert_eq!(get("diff_words"), 1.0);
    assert_eq!(get("logratio_words"), (13f64.ln() - 12f64.ln()) as f32);
    assert_eq!(
        (get("a_turns"), get("b_turns"), get("p_turns")),
        (1.0, 2.0, 1.0)
    );
    assert_eq!(
        (get("a_headers"), get("a_numbered"), get("a_bold")),
        (1.0, 2.0, 1.0)
    );
    // "Boiling 1." / "Boil water." / "Add the egg." / "Done in 9 minutes!"
    assert_eq!(get("a_sentences"), 4.0);
    // "as an ai", "i cannot"; "sorry".
    assert_eq!((get("b_refusals"), get("b_apologies")), (2.0, 1.0));
    assert_eq!(get("a_refusals"), 0.0);
    assert_eq!(get("identical_ab"), 0.0);
    // Prompt types: how, do, i, boil, an, egg. A shares boil, egg (2 of 12 types);
    // B shares i, an, boil (3 of 11 types).
    assert_eq!(get("a_prompt_overlap"), (2.0f64 / 12.0) as f32);
    assert_eq!(get("b_prompt_overlap"), (3.0f64 / 11.0) as f32);
    assert_eq!(get("a_prompt_coverage"), (2.0f64 / 6.0) as f32);
    // A and B share only "boil": 1 of 12 + 11 - 1 = 22 types.
    assert_eq!(get("jaccard_words_ab"), (1.0f64 / 22.0) as f32);

    // Swapped orientation: a_/b_ exchanged, differences negated, symmetric unchanged.
    assert_eq!(swapped("a_words"), 11.0);
    assert_eq!(swapped("b_words"), 12.0);
    assert_eq!(swapped("diff_words"), -1.0);
    assert_eq!(swapped("logratio_words"), -get("logratio_words"));
    assert_eq!(swapped("jaccard_words_ab"), get("jaccard_words_ab"));
    assert_eq!(swapped("p_words"), 6.0);
}

#[test]
fn quality_and_overlap_columns_of_hand_made_battles() {
    let battles = [
        Battle {
            prompt: turns(&["Explain how to boil an egg quickly."]),
            response_a: turns(&[
                "To boil an egg quickly, use hot water. Boil it for 9 minutes.\n\n\
                 1. Heat water.\n3. Add the egg",
            ]),
            response_b: turns(&[
                "I think it depends. Perhaps consult a chef!\nIt depends.\nIt depends.\nIt depends.",
            ]),
        },
        Battle {
            prompt: turns(&["What is the capital of France?"]),
            response_a: turns(&["Париж."]),
            response_b: turns(&["Paris."]),
        },
    ];
    let extractor = Extractor::fit(&battles, &FeatureConfig::default()).unwrap();
    let table = extractor.transform(&battles[..1], &[]).unwrap();
    let get = |name: &str| value(&extractor, &table, Orientation::AsGiven, name);
    let swapped = |name: &str| value(&extractor, &table, Orientation::Swapped, name);

    // Prompt content words (how, to, an are stop words): explain, boil, egg, quickly. A has
    // three of them, B none.
    assert_eq!(get("a_prompt_content_coverage"), 0.75);
    assert_eq!(get("b_prompt_content_coverage"), 0.0);
    // Prompt bigrams: explain how, how to, to boil, boil an, an egg, egg quickly; A has the
    // last four.
    assert_eq!(get("a_prompt_bigram_coverage"), (4.0f64 / 6.0) as f32);
    // B's lines: the first, then "It depends." three times: two of four repeat.
    assert_eq!(get("b_repeated_line_ratio"), 0.5);
    // B's 14 words give 12 trigrams: i think it, think it depends, it depends perhaps,
    // depends perhaps consult, perhaps consult a, consult a chef, a chef it, chef it depends,
    // it depends it, depends it depends, and those last two again: 2 of 12 repeat.
    assert_eq!(get("b_repeated_trigram_ratio"), (2.0f64 / 12.0) as f32);
    assert_eq!(get("a_repeated_trigram_ratio"), 0.0);
    // B's 8 word types share only "it" with A.
    assert_eq!(get("b_words_in_other"), 0.125);
    assert_eq!(
        (get("a_script_mismatch"), get("a_prompt_script_share")),
        (0.0, 1.0)
    );
    // Swapped: sides exchanged, differences negated.
    assert_eq!(swapped("a_prompt_content_coverage"), 0.0);
    assert_eq!(
        swapped("diff_repeated_line_ratio"),
        -get("diff_repeated_line_ratio")
    );
    assert_eq!(swapped("jaccard_bigrams_ab"), get("jaccard_bigrams_ab"));

    // An answer in Cyrillic to an English prompt.
    let table = extractor.transform(&battles[1..], &[]).unwrap();
    let get = |name: &str| value(&extractor, &table, Orientation::AsGiven, name);
    assert_eq!(
        (get("a_script_mismatch"), get("b_script_mismatch")),
        (1.0, 0.0)
    );
    assert_eq!(
        (get("a_prompt_script_share"), get("b_prompt_script_share")),
        (0.0, 1.0)
    );
}

/// Excluded columns are gone, the others keep their values bit for bit, and the swap still
/// mirrors them; bad patterns are refused by name.
#[test]
fn excluded_columns_leave_the_others_unchanged() {
    let battles = arena_battles().unwrap_or_else(|| {
        vec![Battle {
            prompt: turns(&["Say hi."]),
            response_a: turns(&["Hi!"]),
            response_b: turns(&["Hello, I think."]),
        }]
    });
    let all = Extractor::fit(&battles, &small_config()).unwrap();
    let config = FeatureConfig {
        exclude: vec!["*refusals".into(), "*_chars_per_word".into()],
        ..small_config()
    };
    let some = Extractor::fit(&battles, &config).unwrap();
    let names = all.feature_names();
    let kept: Vec<usize> = (0..names.len())
        .filter(|&j| !names[j].ends_with("refusals") && !names[j].ends_with("_chars_per_word"))
        .collect();
    assert_eq!(names.len() - kept.len(), 5 + 4);
    let kept_names: Vec<&String> = kept.iter().map(|&j| &names[j]).collect();
    assert_eq!(some.feature_names().iter().collect::<Vec<_>>(), kept_names);
    let rows: Vec<usize> = (0..battles.len()).collect();
    let (full, reduced) = (
        all.transform(&battles, &[]).unwrap(),
        some.transform(&battles, &[]).unwrap(),
    );
    for orientation in [Orientation::AsGiven, Orientation::Swapped] {
        let (full, reduced) = (
            full.csr(&rows, orientation),
            reduced.csr(&rows, orientation),
        );
        for row in 0..rows.len() {
            let (start, end) = (full.indptr[row] as usize, full.indptr[row + 1] as usize);
            let expected: Vec<(usize, u32)> = (start..end)
                .filter_map(|at| {
                    let column = kept.iter().position(|&k| k == full.indices[at] as usize)?;
                    Some((column, full.values[at].to_bits()))
                })
                .collect();
            let (start, end) = (
                reduced.indptr[row] as usize,
                reduced.indptr[row + 1] as usize,
            );
            let found: Vec<(usize, u32)> = (start..end)
                .map(|at| (reduced.indices[at] as usize, reduced.values[at].to_bits()))
                .collect();
            assert_eq!(found, expected, "row {row}");
        }
    }
    for (pattern, message) in [
        ("no_such_column", "matches no dense column"),
        ("[", "exclude pattern"),
        ("a_refusals", "a swap needs both"),
    ] {
        let config = FeatureConfig {
            exclude: vec![pattern.into()],
            ..small_config()
        };
        let error = Extractor::fit(&battles, &config).unwrap_err().to_string();
        assert!(error.contains(message), "{pattern}: {error}");
    }
}

#[test]
fn identical_responses_are_flagged_and_have_no_tfidf_difference() {
    let answer = turns(&["Paris is the capital of France."]);
    let battle = Battle {
        prompt: turns(&["Capital of France?"]),
        response_a: answer.clone(),
        response_b: answer,
    };
    // One battle is a tiny corpus: keep every n-gram.
    let mut config = FeatureConfig::default();
    config.tfidf.min_df = 1;
    config.tfidf.max_df = 1.0;
    let extractor = Extractor::fit(std::slice::from_ref(&battle), &config).unwrap();
    let table = extractor
        .transform(std::slice::from_ref(&battle), &[])
        .unwrap();
    assert_eq!(
        value(&extractor, &table, Orientation::AsGiven, "identical_ab"),
        1.0
    );
    assert_eq!(
        value(&extractor, &table, Orientation::AsGiven, "jaccard_words_ab"),
        1.0
    );
    let sim = value(
        &extractor,
        &table,
        Orientation::AsGiven,
        "sim_word_tfidf_ab",
    );
    assert!(
        (sim - 1.0).abs() < 1e-6,
        "cosine of identical texts is 1, got {sim}"
    );
    let csr = table.csr(&[0], Orientation::AsGiven);
    let names = extractor.feature_names();
    assert!(csr
        .indices
        .iter()
        .all(|&c| !names[c as usize].starts_with("tfidf_")));
    // Swapping identical responses changes nothing.
    assert_eq!(csr, table.csr(&[0], Orientation::Swapped));
}

#[test]
fn config_is_strict_and_validated() {
    let parsed: FeatureConfig =
        serde_json::from_str(r#"{"tfidf": {"char": false, "word_max_features": 7}}"#).unwrap();
    assert!(!parsed.tfidf.char);
    assert_eq!(parsed.tfidf.word_max_features, 7);
    assert_eq!(
        parsed.tfidf.char_ngram_max,
        FeatureConfig::default().tfidf.char_ngram_max
    );
    assert!(serde_json::from_str::<FeatureConfig>(r#"{"tfidf": {"wrod": true}}"#).is_err());
    assert!(serde_json::from_str::<FeatureConfig>(r#"{"tf_idf": {}}"#).is_err());

    let mut bad = FeatureConfig::default();
    bad.tfidf.char_ngram_min = 6;
    assert!(Extractor::fit(&[], &bad).is_err());
    let mut bad = FeatureConfig::default();
    bad.tfidf.max_df = 0.0;
    assert!(Extractor::fit(&[], &bad).is_err());

    // Switching an analyzer off removes its columns.
    let Some(battles) = arena_battles() else {
        return;
    };
    let words_only = Extractor::fit(&battles, &parsed).unwrap();
    let names = words_only.feature_names();
    assert!(!names
        .iter()
        .any(|n| n.starts_with("tfidf_c:") || n.contains("sim_char")));
    assert_eq!(
        names.iter().filter(|n| n.starts_with("tfidf_w:")).count(),
        7
    );
}

#[test]
fn edge_case_texts_are_finite_and_swap_exactly() {
    let long_word = "https://example.com/".to_string() + &"x".repeat(5000);
    let battles = vec![
        Battle::default(),
        Battle {
            prompt: turns(&[""]),
            response_a: turns(&["   \n\n  "]),
            response_b: turns(&[]),
        },
        Battle {
            prompt: turns(&["😀😀", "Qu'est-ce que c'est ?"]),
            response_a: turns(&["Ça veut dire « bonjour » — 你好。", ""]),
            response_b: turns(&[&long_word]),
        },
        Battle {
            prompt: turns(&["Write code"]),
            response_a: turns(&["```python\nprint('hi')\n```"]),
            response_b: turns(&["```\nunclosed"]),
        },
    ];
    let mut config = small_config();
    config.tfidf.min_df = 1;
    let extractor = Extractor::fit(&battles, &config).unwrap();
    let table = extractor.transform(&battles, &[]).unwrap();
    let swapped: Vec<Battle> = battles.iter().map(Battle::swapped).collect();
    let swapped_table = extractor.transform(&swapped, &[]).unwrap();
    let all: Vec<usize> = (0..battles.len()).collect();
    for orientation in [Orientation::AsGiven, Orientation::Swapped] {
        assert_csr_invariants(&table.csr(&all, orientation));
    }
    assert_bit_identical(
        &swapped_table.csr(&all, Orientation::AsGiven),
        &table.csr(&all, Orientation::Swapped),
        "edge cases",
    );
    // An empty battle has only its identical-responses flag set.
    let empty = table.csr(&[0], Orientation::AsGiven);
    assert_eq!(empty.indices.len(), 1);
    assert_eq!(
        extractor.feature_names()[empty.indices[0] as usize],
        "identical_ab"
    );
}

/// A fitted extractor saved as JSON and restored computes bit-identical features, on battles
/// it was not fitted on too; a state whose parts disagree is refused, naming what is wrong.
#[test]
fn saved_state_restores_bit_identical_features() {
    let Some(battles) = arena_battles() else {
        return;
    };
    // Fitted on the first 60 battles; the comparison covers the other 43 as well.
    let fitted = Extractor::fit(&battles[..60], &small_config()).unwrap();
    let json = serde_json::to_string(&fitted.state()).unwrap();
    let restored = Extractor::restore(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(fitted.feature_names(), restored.feature_names());
    let rows: Vec<usize> = (0..battles.len()).collect();
    for orientation in [Orientation::AsGiven, Orientation::Swapped] {
        assert_bit_identical(
            &fitted
                .transform(&battles, &[])
                .unwrap()
                .csr(&rows, orientation),
            &restored
                .transform(&battles, &[])
                .unwrap()
                .csr(&rows, orientation),
            "restored extractor",
        );
    }

    let refused = |edit: &dyn Fn(&mut serde_json::Value), expected: &str| {
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        edit(&mut value);
        let state = serde_json::from_value(value).unwrap();
        let error = Extractor::restore(state).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    };
    refused(&|v| v["format"] = 99.into(), "format 99");
    refused(
        &|v| v["vocabularies"]["hash_probe"] = 1.into(),
        "hashes n-grams differently",
    );
    refused(
        &|v| v["config"]["tfidf"]["char"] = false.into(),
        "the config has char n-grams off",
    );
    refused(
        &|v| v["config"]["tfidf"]["word_max_features"] = 3.into(),
        "more than the config's 3",
    );
    refused(
        &|v| v["vocabularies"]["word"]["idf"][0] = 0.5.into(),
        "word vocabulary: idf of",
    );
    refused(
        &|v| {
            let names = v["vocabularies"]["char"]["names"].as_array_mut().unwrap();
            names.pop();
        },
        "char vocabulary:",
    );
    refused(
        &|v| {
            let hashes = &mut v["vocabularies"]["word"]["hashes"];
            hashes[1] = hashes[0].clone();
        },
        "an n-gram hash appears twice",
    );
}

/// Semantic columns: exact cosines of the given embeddings, exactly mirrored when A and B are
/// exchanged, and refused when the embeddings do not match the battles.
#[test]
fn semantic_columns_are_exact_cosines_and_swap_exactly() {
    let battles = vec![
        Battle {
            prompt: turns(&["Explain recursion."]),
            response_a: turns(&["A function that calls itself."]),
            response_b: turns(&["No."]),
        },
        Battle {
            prompt: turns(&["Say hi."]),
            response_a: turns(&["hi"]),
            response_b: turns(&["hi"]),
        },
    ];
    let config = FeatureConfig {
        semantic: true,
        ..small_config()
    };
    let extractor = Extractor::fit(&battles, &config).unwrap();
    let (p, a, b) = ([1.0f32, 0.0, 0.0], [0.6f32, 0.8, 0.0], [0.0f32, 2.0, 0.0]);
    let zero = [0.0f32; 3];
    let given = [
        BattleEmbeddings {
            prompt: &p,
            response_a: &a,
            response_b: &b,
        },
        BattleEmbeddings {
            prompt: &p,
            response_a: &a,
            response_b: &zero,
        },
    ];
    let table = extractor.transform(&battles, &given).unwrap();
    let at = |name: &str| value(&extractor, &table, Orientation::AsGiven, name);
    assert_eq!(at("a_sem_sim_prompt"), 0.6);
    assert_eq!(at("b_sem_sim_prompt"), 0.0);
    assert_eq!(at("diff_sem_sim_prompt"), 0.6);
    assert_eq!(at("sem_sim_ab"), 0.8);

    let swapped_battles: Vec<Battle> = battles.iter().map(Battle::swapped).collect();
    let swapped: Vec<BattleEmbeddings> = given
        .iter()
        .map(|e| BattleEmbeddings {
            prompt: e.prompt,
            response_a: e.response_b,
            response_b: e.response_a,
        })
        .collect();
    let rows = [0, 1];
    assert_bit_identical(
        &extractor
            .transform(&swapped_battles, &swapped)
            .unwrap()
            .csr(&rows, Orientation::AsGiven),
        &table.csr(&rows, Orientation::Swapped),
        "semantic columns of the swapped battles",
    );

    assert!(extractor.transform(&battles, &given[..1]).is_err());
    let plain = Extractor::fit(&battles, &small_config()).unwrap();
    assert!(plain.transform(&battles, &given).is_err());
    assert!(!plain.feature_names().iter().any(|n| n.contains("sem_sim")));
}
