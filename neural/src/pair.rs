//! A battle as both members read it: its texts, and its tokens in both answer orders.

/// The texts of one battle, each multi-turn field already joined into one string.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponsePair {
    pub prompt: String,
    pub response_a: String,
    pub response_b: String,
}

impl ResponsePair {
    /// The same battle with the answers exchanged.
    pub fn swapped(&self) -> ResponsePair {
        ResponsePair {
            prompt: self.prompt.clone(),
            response_a: self.response_b.clone(),
            response_b: self.response_a.clone(),
        }
    }
}

/// One battle tokenized in both A/B orders, ready for batching.
#[derive(Clone, Debug)]
pub struct EncodedPair {
    /// The model inputs as given (one sequence; DeBERTa's siamese layout: prompt+A then
    /// prompt+B).
    pub as_given: Vec<Vec<u32>>,
    /// The same with A and B exchanged.
    pub swapped: Vec<Vec<u32>>,
}

impl EncodedPair {
    /// Tokens in its longest sequence, either order: the padded width of a batch holding it.
    pub fn longest(&self) -> usize {
        self.as_given
            .iter()
            .chain(&self.swapped)
            .map(Vec::len)
            .max()
            .unwrap_or(0)
    }

    /// The sequences of one answer order: swapped or as given.
    pub fn view(&self, swapped: bool) -> &[Vec<u32>] {
        if swapped {
            &self.swapped
        } else {
            &self.as_given
        }
    }
}
