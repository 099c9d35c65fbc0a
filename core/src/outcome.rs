/// Probabilities of the three outcomes, in [`CLASS_COLUMNS`] order.
pub type Probs = [f64; 3];

/// The submission's probability columns, in class-index order.
pub const CLASS_COLUMNS: [&str; 3] = ["winner_model_a", "winner_model_b", "winner_tie"];

/// Who won a battle. The discriminant is the class index used by every model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    A = 0,
    B = 1,
    Tie = 2,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::A, Outcome::B, Outcome::Tie];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(index: usize) -> Option<Outcome> {
        Outcome::ALL.get(index).copied()
    }

    /// The outcome once responses A and B have exchanged places.
    pub fn swapped(self) -> Outcome {
        match self {
            Outcome::A => Outcome::B,
            Outcome::B => Outcome::A,
            Outcome::Tie => Outcome::Tie,
        }
    }
}

/// Probabilities once responses A and B have exchanged places.
pub fn swap_probs(p: Probs) -> Probs {
    [p[1], p[0], p[2]]
}

/// Averages a prediction with the mirrored prediction for the swapped input, so that
/// exchanging A and B in the input exchanges the first two probabilities exactly.
pub fn swap_average(as_given: Probs, swapped: Probs) -> Probs {
    let mirrored = swap_probs(swapped);
    let mean = [
        (as_given[0] + mirrored[0]) / 2.0,
        (as_given[1] + mirrored[1]) / 2.0,
        (as_given[2] + mirrored[2]) / 2.0,
    ];
    let total = mean[0] + mean[1] + mean[2];
    mean.map(|p| p / total)
}

/// Probabilities from logits (a softmax in f64): how the neural members' swap-averaged logits
/// become predictions.
pub fn probs_from_logits(logits: &[f32; 3]) -> Probs {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let exp = logits.map(|l| (l as f64 - max).exp());
    let total = exp[0] + exp[1] + exp[2];
    exp.map(|e| e / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_average_is_exactly_mirror_symmetric() {
        let p = [0.61, 0.27, 0.12];
        let q = [0.22, 0.55, 0.23];
        let forward = swap_average(p, q);
        let backward = swap_average(q, p);
        assert_eq!(forward, swap_probs(backward));
        assert!((forward.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((forward[0] - (0.61 + 0.55) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn outcome_swap_mirrors_a_and_b() {
        assert_eq!(Outcome::A.swapped(), Outcome::B);
        assert_eq!(Outcome::Tie.swapped(), Outcome::Tie);
        assert_eq!(Outcome::from_index(1), Some(Outcome::B));
        assert_eq!(Outcome::from_index(3), None);
    }
}
