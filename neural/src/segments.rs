//! The token budget of a battle: how its segments (prompt, answers) share the tokens a
//! sequence has room for, and which part of an over-long segment is kept. Both members cut
//! battles with it (DeBERTa's layouts, the LLM member's template).

/// How the token budget of a sequence is split between prompt and responses, and which part
/// of an over-long segment is kept.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentBudget {
    /// Share of the budget reserved for the prompt; the responses split the rest evenly.
    pub prompt_share: f64,
    /// Share of a truncated segment kept from its start; the rest comes from its end.
    pub head_share: f64,
    /// The same for the prompt alone where set (1: its head only, as the LMSYS winners cut
    /// prompts); `head_share` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_head_share: Option<f64>,
}

impl Default for SegmentBudget {
    fn default() -> Self {
        SegmentBudget {
            prompt_share: 0.2,
            head_share: 0.5,
            prompt_head_share: None,
        }
    }
}

/// Which kind of segment a cut is made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Prompt,
    Response,
}

impl SegmentBudget {
    /// The shares of a battle's segments: the prompt's, then each answer's (the rest, halved).
    pub fn battle_shares(&self) -> [f64; 3] {
        let answer_share = (1.0 - self.prompt_share) / 2.0;
        [self.prompt_share, answer_share, answer_share]
    }

    /// The shares of the siamese layout's two segments: the prompt's and its answer's.
    pub fn pair_shares(&self) -> [f64; 2] {
        [self.prompt_share, 1.0 - self.prompt_share]
    }

    /// The least `available` at which every segment with a share keeps a token of texts longer
    /// than any budget ([`SegmentBudget::allocate`]); below it such a segment reads alike in
    /// every row.
    pub fn least_room(&self, shares: &[f64]) -> usize {
        let long = vec![usize::MAX; shares.len()];
        let starved = |room: usize| {
            let counts = self.allocate(&long, shares, room);
            counts
                .iter()
                .zip(shares)
                .any(|(&count, &share)| share > 0.0 && count == 0)
        };
        // A segment keeps floor(room × share / total) tokens; the loop mends the rounding.
        let total: f64 = shares.iter().sum();
        let mut room = shares
            .iter()
            .filter(|&&share| share > 0.0)
            .map(|&share| (total / share).ceil() as usize)
            .max()
            .unwrap_or(0);
        while starved(room) {
            room += 1;
        }
        room
    }

    /// Token counts for segments of the given lengths sharing `available` tokens: each gets
    /// its share, and what a short segment leaves is handed on to the longer ones (in
    /// proportion to their shares). Equal shares and lengths give equal counts, so A and B are
    /// treated alike.
    pub fn allocate(&self, lengths: &[usize], shares: &[f64], available: usize) -> Vec<usize> {
        let mut counts = vec![0usize; lengths.len()];
        let mut open: Vec<usize> = (0..lengths.len()).collect();
        let mut left = available as f64;
        loop {
            let total_share: f64 = open.iter().map(|&i| shares[i]).sum();
            if open.is_empty() || total_share <= 0.0 {
                return counts;
            }
            // Segments that fit in their share take their full length and leave the rest.
            let fitting: Vec<usize> = open
                .iter()
                .copied()
                .filter(|&i| (lengths[i] as f64) <= left * shares[i] / total_share)
                .collect();
            if fitting.is_empty() {
                for &i in &open {
                    counts[i] = (left * shares[i] / total_share).floor() as usize;
                }
                return counts;
            }
            for &i in &fitting {
                counts[i] = lengths[i];
                left -= lengths[i] as f64;
            }
            open.retain(|i| !fitting.contains(i));
        }
    }

    /// Keeps `budget` tokens of `ids`, a `segment`: its head and its tail.
    pub fn truncate(&self, ids: &[u32], budget: usize, segment: Segment) -> Vec<u32> {
        let (head, tail) = self.head_and_tail(ids, budget, segment);
        [head, tail].concat()
    }

    /// The head and the tail of `ids` that [`SegmentBudget::truncate`] keeps (all of `ids`
    /// and nothing where it fits), for callers that mark the cut between them.
    pub fn head_and_tail<'a>(
        &self,
        ids: &'a [u32],
        budget: usize,
        segment: Segment,
    ) -> (&'a [u32], &'a [u32]) {
        if ids.len() <= budget {
            return (ids, &[]);
        }
        let share = match segment {
            Segment::Prompt => self.prompt_head_share.unwrap_or(self.head_share),
            Segment::Response => self.head_share,
        };
        let head = (((budget as f64) * share).round() as usize).min(budget);
        (&ids[..head], &ids[ids.len() - (budget - head)..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_segments_hand_their_budget_on() {
        let budget = SegmentBudget::default();
        let counts = budget.allocate(&[10, 500, 500], &[0.2, 0.4, 0.4], 508);
        assert_eq!(counts, vec![10, 249, 249]);
        let counts = budget.allocate(&[10, 20, 500], &[0.2, 0.4, 0.4], 508);
        assert_eq!(counts, vec![10, 20, 478]);
        let counts = budget.allocate(&[300, 300, 300], &[0.2, 0.4, 0.4], 100);
        assert_eq!(counts, vec![20, 40, 40]);
    }

    /// At the least room every segment with a share keeps a token of long texts; one token
    /// less starves one.
    #[test]
    fn the_least_room_keeps_a_token_of_each_segment() {
        let long = [usize::MAX; 3];
        for (prompt_share, least) in [(0.2, 5), (0.3, 4), (0.5, 4), (0.01, 100), (0.6, 5)] {
            let budget = SegmentBudget {
                prompt_share,
                ..SegmentBudget::default()
            };
            let shares = budget.battle_shares();
            assert_eq!(
                budget.least_room(&shares),
                least,
                "prompt_share {prompt_share}"
            );
            assert!(budget
                .allocate(&long, &shares, least)
                .iter()
                .all(|&c| c > 0));
            assert!(budget.allocate(&long, &shares, least - 1).contains(&0));
        }
        // A segment without a share is never owed a token.
        let budget = SegmentBudget {
            prompt_share: 0.0,
            ..SegmentBudget::default()
        };
        assert_eq!(budget.least_room(&budget.battle_shares()), 2);
        assert_eq!(budget.least_room(&budget.pair_shares()), 1);
    }

    #[test]
    fn truncation_keeps_head_and_tail() {
        let mut budget = SegmentBudget {
            prompt_share: 0.2,
            head_share: 0.5,
            prompt_head_share: None,
        };
        let ids: Vec<u32> = (0..10).collect();
        for segment in [Segment::Prompt, Segment::Response] {
            assert_eq!(budget.truncate(&ids, 4, segment), vec![0, 1, 8, 9]);
            assert_eq!(budget.truncate(&ids, 20, segment), ids);
            assert_eq!(budget.truncate(&ids, 0, segment), Vec::<u32>::new());
        }
        // The prompt's own share: its head alone.
        budget.prompt_head_share = Some(1.0);
        assert_eq!(budget.truncate(&ids, 4, Segment::Prompt), vec![0, 1, 2, 3]);
        assert_eq!(
            budget.truncate(&ids, 4, Segment::Response),
            vec![0, 1, 8, 9]
        );
    }
}
