//! The DeBERTa member's estimate of a fold's training memory (`neural::MemoryEstimate`), which
//! the shared loop checks against the device's free memory before the fold starts.
use neural::{MemoryEstimate, Precision};

/// What a fold's training memory depends on.
#[derive(Clone, Debug)]
pub(crate) struct TrainingShape {
    /// Sequences per training micro-batch (rows, twice that for the siamese layout).
    pub sequences: usize,
    /// Sequences per prediction batch (both A/B orders of each row).
    pub eval_sequences: usize,
    /// The longest sequence, in tokens: the padded width of the widest batch.
    pub len: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    /// Encoder layers trained in the last (largest) stage the run reaches.
    pub trained_layers: usize,
    /// Weights of one encoder layer.
    pub layer_params: usize,
    /// Weights of the whole model.
    pub params: usize,
    /// Weights trained in the last stage.
    pub trained_params: usize,
    /// Elements of the word-embedding table when it trains (0 otherwise): candle builds its
    /// gradient as a zero table plus an index-add of the rows, two tables at once.
    pub trained_embedding_table: usize,
    pub precision: Precision,
    pub checkpoint: bool,
    pub accumulation: usize,
}

/// Bytes of one encoder layer's activations that a tracked forward pass keeps for the backward
/// pass, counted from `model.rs` and `ops.rs`, with T tokens (sequences × len), A attention
/// entries (sequences × heads × len²) and b bytes per activation:
/// - 22·T·hidden·b: the query (projection, bias, head split, scaled copy: 4), key and value
///   (3 each), the context (2), attention output (2), its dropout (1), residual (1),
///   LayerNorm (1), the output projection (2), its dropout (1), residual (1), LayerNorm (1);
/// - 2·T·hidden bytes: the two dropout masks (one byte per element);
/// - 3·T·intermediate·b: the intermediate projection, its bias and the activation;
/// - A·(b + 4 + 1): the attention probabilities, their f32 softmax and the dropout mask;
/// - in bf16/f16 also the f32 copies around both LayerNorms (2 × 2·T·hidden·4) and the layer's
///   weights cast to the activations' dtype.
fn layer_bytes(shape: &TrainingShape, sequences: usize) -> u64 {
    let b = shape.precision.dtype().size_in_bytes() as u64;
    let tokens = (sequences * shape.len) as u64;
    let attention = (sequences * shape.heads * shape.len * shape.len) as u64;
    let (hidden, intermediate) = (shape.hidden as u64, shape.intermediate as u64);
    let mut bytes =
        tokens * hidden * (22 * b + 2) + 3 * tokens * intermediate * b + attention * (b + 4 + 1);
    if shape.precision != Precision::F32 {
        bytes += 4 * tokens * hidden * 4 + shape.layer_params as u64 * b;
    }
    bytes
}

/// The estimate for `shape`. Activations: the embeddings' output (5·T·hidden·b: lookup,
/// LayerNorm, mask, dropout, cast), plus per trained layer its kept activations
/// ([`layer_bytes`]) or, with gradient checkpointing, its input and output only
/// (2·T·hidden·b), plus one layer's worth as the backward pass's working space (two with
/// checkpointing: the recomputed layer and its backward pass). Frozen layers keep nothing
/// (their output is detached). Prediction runs one layer at a time on its larger batches:
/// twice a layer's activations at that batch (what the layer keeps while it runs, and the
/// attention's temporaries). Allocator slack and the tokenized data are not counted; the
/// count of tensors errs high (a few of them are views in some layouts).
pub(crate) fn estimate(shape: &TrainingShape) -> MemoryEstimate {
    let b = shape.precision.dtype().size_in_bytes() as u64;
    let tokens = (shape.sequences * shape.len) as u64;
    let layer = layer_bytes(shape, shape.sequences);
    let (kept, working) = if shape.checkpoint {
        (2 * tokens * shape.hidden as u64 * b, 2 * layer)
    } else {
        (layer, layer)
    };
    let training =
        5 * tokens * shape.hidden as u64 * b + shape.trained_layers as u64 * kept + working;
    let prediction = 2 * layer_bytes(shape, shape.eval_sequences);
    let f32_bytes = |params: usize| 4 * params as u64;
    MemoryEstimate {
        weights: f32_bytes(shape.params),
        optimizer: 2 * f32_bytes(shape.trained_params),
        gradients: f32_bytes(shape.trained_params) * if shape.accumulation > 1 { 2 } else { 1 }
            + f32_bytes(shape.trained_embedding_table),
        checkpoint: f32_bytes(shape.params),
        activations: training.max(prediction),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> TrainingShape {
        TrainingShape {
            sequences: 2,
            eval_sequences: 4,
            len: 10,
            hidden: 8,
            intermediate: 16,
            heads: 2,
            trained_layers: 3,
            layer_params: 1000,
            params: 10_000,
            trained_params: 4000,
            trained_embedding_table: 500,
            precision: Precision::F32,
            checkpoint: false,
            accumulation: 1,
        }
    }

    #[test]
    fn the_estimate_counts_each_part_exactly() {
        // One layer at 2 sequences: T = 20, A = 2·2·100 = 400, b = 4:
        // 20·8·(88 + 2) + 3·20·16·4 + 400·9 = 14,400 + 3,840 + 3,600 = 21,840.
        // At the 4 prediction sequences: 28,800 + 7,680 + 7,200 = 43,680.
        let f32 = estimate(&shape());
        assert_eq!(
            f32,
            MemoryEstimate {
                weights: 40_000,
                optimizer: 32_000,
                // 4 × 4,000 and the embedding table's second copy, 4 × 500.
                gradients: 18_000,
                checkpoint: 40_000,
                // Embeddings 5·20·8·4 = 3,200, 3 layers + 1 working = 87,360: 90,560, above
                // prediction's 2 × 43,680 = 87,360.
                activations: 90_560,
            }
        );
        assert_eq!(f32.to_allocate(), 180_560);
        assert_eq!(f32.total(), 220_560);

        // Checkpointing keeps 2·20·8·4 = 1,280 per layer and two layers of working space:
        // 3,200 + 3,840 + 43,680 = 50,720, below prediction's 87,360. Accumulation doubles
        // the gradients.
        let checkpointed = estimate(&TrainingShape {
            checkpoint: true,
            accumulation: 4,
            ..shape()
        });
        assert_eq!(checkpointed.activations, 87_360);
        assert_eq!(checkpointed.gradients, 34_000);

        // bf16, b = 2: a layer is 20·8·46 + 3·20·16·2 + 400·7 + (4·20·8·4 + 1000·2)
        // = 7,360 + 1,920 + 2,800 + 4,560 = 16,640; training 1,600 + 4 × 16,640 = 68,160;
        // prediction 2 × (14,720 + 3,840 + 5,600 + 7,120) = 62,560.
        let bf16 = estimate(&TrainingShape {
            precision: Precision::Bf16,
            ..shape()
        });
        assert_eq!(bf16.activations, 68_160);
    }
}
