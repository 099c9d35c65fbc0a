//! An estimate of a fold's training memory, checked against the device's free memory before
//! training starts, so that a run too large for the machine stops with the settings to lower
//! instead of being killed (CPU) or failing with an allocation error mid-epoch (CUDA). Each
//! member counts its own ([`crate::FoldModel::training_memory`]).

/// Estimated bytes of a fold's training, by part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Every weight in f32: allocated when the model loads, before the check.
    pub weights: u64,
    /// AdamW's two f32 moments per trained weight.
    pub optimizer: u64,
    /// The trained weights' f32 gradients; twice that with gradient accumulation (the running
    /// sum and the new micro-batch's); plus one word-embedding table while its gradient is made.
    pub gradients: u64,
    /// The copy of every weight that the best checkpoint keeps.
    pub checkpoint: u64,
    /// The larger of training's and prediction's activations.
    pub activations: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.to_allocate()
    }

    /// What training allocates beyond the loaded weights: what must be free.
    pub fn to_allocate(&self) -> u64 {
        self.optimizer + self.gradients + self.checkpoint + self.activations
    }
}

/// Gibibytes, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
