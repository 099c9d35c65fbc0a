//! A generated arena-like data set, so that a fresh clone can run the whole pipeline with one
//! command. Preferences follow rules a real judge partly follows: longer, structured answers
//! tend to win, refusals lose, and near-identical answers tie.
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::Path;

const TOPICS: [&str; 12] = [
    "sourdough bread",
    "the French revolution",
    "binary search",
    "photosynthesis",
    "learning Spanish",
    "a budget for students",
    "black holes",
    "writing a cover letter",
    "Rust lifetimes",
    "marathon training",
    "the stock market",
    "composting at home",
];

const SENTENCES: [&str; 16] = [
    "{t} is easier to understand once you see the main idea.",
    "A good first step with {t} is to start small and check your progress.",
    "Many people find {t} confusing at first, and that is normal.",
    "The key facts about {t} fit in a few lines.",
    "Experts on {t} usually recommend patience and practice.",
    "There are three things to keep in mind about {t}.",
    "Here is a short example that shows how {t} works in practice.",
    "Common mistakes with {t} come from skipping the basics.",
    "If you want to go deeper into {t}, read a good introduction.",
    "In short, {t} rewards careful attention to detail.",
    "One useful trick for {t} is to write down what you learn.",
    "The history of {t} explains a lot about how it looks today.",
    "Numbers help: about 80% of beginners improve within 4 weeks.",
    "You can compare {t} with something you already know.",
    "Be careful: advice about {t} on forums is often wrong.",
    "Finally, practice {t} a little every day.",
];

const PROMPTS: [&str; 6] = [
    "Explain {t} to a beginner.",
    "What should I know about {t}?",
    "Give me practical tips on {t}.",
    "Can you summarise {t} in a few points?",
    "Write a short guide to {t}.",
    "Why do people care about {t}?",
];

/// Who asks and why: with the topics and the prompt templates, 3,456 distinct first turns, so
/// that every battle of the default example (2,200) has its own prompt, as Kaggle's battles
/// mostly do. With repeated prompts the first run of a fresh clone would warn that its OOF
/// score is flattered by prompts seen in training.
const ASKERS: [&str; 8] = [
    "I am a student.",
    "I am a retired teacher.",
    "I work night shifts.",
    "I have ten minutes.",
    "My manager asked me about this.",
    "I am preparing a talk.",
    "English is my second language.",
    "My kid asked me yesterday.",
];

const PURPOSES: [&str; 6] = [
    "Keep it simple.",
    "Be precise.",
    "Use an example.",
    "Skip the history.",
    "Mention one common mistake.",
    "End with a summary.",
];

const REFUSALS: [&str; 3] = [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot provide advice on {t}.",
    "I apologize, but I am unable to assist with this.",
];

/// The example's default size and seed, shared by `ensemble example` and `ensemble cv`.
pub const TRAIN_ROWS: usize = 2000;
pub const TEST_ROWS: usize = 200;
pub const SEED: u64 = 7;

struct Answer {
    text: String,
    quality: f64,
}

fn answer(rng: &mut StdRng, topic: &str) -> Answer {
    if rng.random_bool(0.08) {
        let text = REFUSALS[rng.random_range(0..REFUSALS.len())].replace("{t}", topic);
        return Answer {
            text,
            quality: -1.5 + rng.random_range(-0.3..0.3),
        };
    }
    let n_sentences = rng.random_range(1..=12);
    let structured = rng.random_bool(0.4);
    let mut text = String::new();
    if structured {
        writeln!(text, "## {}\n", capitalise(topic)).unwrap();
    }
    for i in 0..n_sentences {
        let sentence = SENTENCES[rng.random_range(0..SENTENCES.len())].replace("{t}", topic);
        match (structured, i % 4) {
            (true, 0) => writeln!(text, "- **{sentence}**").unwrap(),
            (true, _) => writeln!(text, "- {sentence}").unwrap(),
            (false, 3) => write!(text, "{sentence}\n\n").unwrap(),
            (false, _) => write!(text, "{sentence} ").unwrap(),
        }
    }
    let quality = 0.45 * (n_sentences as f64).ln() + if structured { 0.5 } else { 0.0 };
    Answer {
        text: text.trim_end().to_owned(),
        quality,
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
}

fn csv_field(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn json_list(turns: &[String]) -> String {
    serde_json::to_string(turns).expect("strings serialise")
}

/// The distinct first turns, (topic, text), in a seeded random order.
fn first_turns(rng: &mut StdRng) -> Vec<(&'static str, String)> {
    let mut turns =
        Vec::with_capacity(TOPICS.len() * PROMPTS.len() * ASKERS.len() * PURPOSES.len());
    for topic in TOPICS {
        for prompt in PROMPTS {
            for asker in ASKERS {
                for purpose in PURPOSES {
                    let question = prompt.replace("{t}", topic);
                    turns.push((topic, format!("{asker} {question} {purpose}")));
                }
            }
        }
    }
    turns.shuffle(rng);
    turns
}

/// One battle on `topic` opened by `first_turn`: prompt turns, both answers' turns, and the
/// winner's class index.
fn battle(rng: &mut StdRng, topic: &str, first_turn: &str) -> ([Vec<String>; 3], usize) {
    let n_turns = if rng.random_bool(0.15) { 2 } else { 1 };
    let (mut prompt, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    let (mut quality_a, mut quality_b) = (0.0, 0.0);
    for turn in 0..n_turns {
        prompt.push(match turn {
            0 => first_turn.to_owned(),
            _ => PROMPTS[rng.random_range(0..PROMPTS.len())].replace("{t}", topic),
        });
        let first = answer(rng, topic);
        let second = if rng.random_bool(0.07) {
            Answer {
                text: first.text.clone(),
                quality: first.quality,
            }
        } else {
            answer(rng, topic)
        };
        quality_a += first.quality;
        quality_b += second.quality;
        a.push(first.text);
        b.push(second.text);
    }
    let margin = quality_a - quality_b + rng.random_range(-0.6..0.6);
    let winner = if a == b || margin.abs() < 0.25 {
        2
    } else if rng.random_bool(1.0 / (1.0 + (-2.0 * margin).exp())) {
        0
    } else {
        1
    };
    ([prompt, a, b], winner)
}

/// Writes `train.csv` and `test.csv` in Kaggle's formats to `dir`. Every battle has its own
/// prompt up to 3,456 battles in all (training and test); beyond, prompts come round again.
pub fn write(dir: &Path, train_rows: usize, test_rows: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let turns = first_turns(&mut rng);
    let mut opening = turns.iter().cycle();
    let mut next_battle = |rng: &mut StdRng| {
        let (topic, first_turn) = opening.next().expect("a cycle of a non-empty list");
        battle(rng, topic, first_turn)
    };
    let mut train = String::from(
        "id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n",
    );
    for i in 0..train_rows {
        let ([prompt, a, b], winner) = next_battle(&mut rng);
        let flags: Vec<String> = (0..3).map(|k| u8::from(k == winner).to_string()).collect();
        writeln!(
            train,
            "{},model-{},model-{},{},{},{},{}",
            100_000 + i,
            rng.random_range(0..5),
            rng.random_range(0..5),
            csv_field(&json_list(&prompt)),
            csv_field(&json_list(&a)),
            csv_field(&json_list(&b)),
            flags.join(",")
        )
        .unwrap();
    }
    let mut test = String::from("id,prompt,response_a,response_b\n");
    for i in 0..test_rows {
        let ([prompt, a, b], _) = next_battle(&mut rng);
        writeln!(
            test,
            "{},{},{},{}",
            900_000 + i,
            csv_field(&json_list(&prompt)),
            csv_field(&json_list(&a)),
            csv_field(&json_list(&b))
        )
        .unwrap();
    }
    for (name, text) in [("train.csv", train), ("test.csv", test)] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prompt column of a CSV file the example wrote.
    fn prompts(path: &Path) -> Vec<String> {
        let mut reader = csv::Reader::from_path(path).unwrap();
        let column = reader
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "prompt")
            .unwrap();
        reader
            .records()
            .map(|r| r.unwrap()[column].to_owned())
            .collect()
    }

    #[test]
    fn every_battle_of_the_default_example_has_its_own_prompt() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), TRAIN_ROWS, TEST_ROWS, SEED).unwrap();
        let mut all: Vec<String> = ["train.csv", "test.csv"]
            .iter()
            .flat_map(|f| prompts(&dir.path().join(f)))
            .collect();
        assert_eq!(all.len(), TRAIN_ROWS + TEST_ROWS);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), TRAIN_ROWS + TEST_ROWS, "a prompt appears twice");
    }

    #[test]
    fn beyond_the_distinct_openings_prompts_come_round_again() {
        let mut rng = StdRng::seed_from_u64(1);
        let turns = first_turns(&mut rng);
        assert_eq!(turns.len(), 3456);
        let mut texts: Vec<&String> = turns.iter().map(|(_, t)| t).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), 3456);
    }
}
