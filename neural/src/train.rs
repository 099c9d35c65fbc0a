//! Fine-tuning on one fold, for any member's model ([`FoldModel`]): AdamW with decoupled
//! weight decay, warm-up then cosine or linear decay, gradient accumulation, global-norm
//! clipping, label smoothing, f16 loss scaling, A/B swap augmentation and early stopping on
//! the held-out log loss; and swap-averaged prediction.
use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, TensorId, Var, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::adamw_cpu;
use crate::memory::{gib, MemoryEstimate};
use crate::ops::DropoutRng;
use crate::{
    free_memory, EncodedPair, Error, Precision, Result, Schedule, Setting, TrainingConfig,
};
use ensemble_core::metrics::log_loss;
use ensemble_core::{probs_from_logits, swap_average, Outcome, Probs};

/// One held-out evaluation during training.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalPoint {
    pub epoch: usize,
    pub step: usize,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    pub valid_log_loss: f64,
}

/// What [`fit_fold`] returns: the held-out predictions of the best checkpoint (which the
/// classifier holds afterwards) and the training history.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FoldResult {
    pub best_log_loss: f64,
    pub best_step: usize,
    pub steps: usize,
    pub history: Vec<EvalPoint>,
    /// Swap-averaged logits of the held-out rows at the best checkpoint.
    #[serde(skip)]
    pub valid_logits: Vec<[f32; 3]>,
    /// Wall time of the whole fit, evaluations included.
    pub train_seconds: f64,
    /// The part of `train_seconds` spent on held-out evaluations and checkpoints.
    pub eval_seconds: f64,
    /// f16 only: the final loss scale and the steps skipped for overflowing gradients.
    pub loss_scale: Option<LossScaler>,
    /// Optimizer steps skipped because their gradients were not finite (any precision).
    pub skipped_steps: usize,
}

/// The best evaluation so far and the weights that made it.
struct Checkpoint {
    log_loss: f64,
    step: usize,
    valid_logits: Vec<[f32; 3]>,
    weights: HashMap<String, Tensor>,
}

/// Learning-rate multiplier at an optimizer step: linear warm-up, then decay to zero.
fn lr_factor(step: usize, total: usize, config: &TrainingConfig) -> f64 {
    let warmup = (config.warmup_ratio * total as f64).round() as usize;
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    match config.schedule {
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
    }
}

/// A weight's AdamW state: the first and second moments as one `[2, ..shape]` tensor (the CPU
/// step updates both in one pass).
struct Moments {
    values: Tensor,
    steps: i32,
}

/// AdamW (decoupled weight decay, bias-corrected moments, as torch.optim.AdamW) over named
/// variables; moments are kept by name so that layers unfrozen later start their own. Which
/// weights decay is the model's to say ([`FoldModel::decays`]).
pub struct AdamW {
    moments: HashMap<String, Moments>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Elements per block of an in-place update.
    block_elements: usize,
    /// Whether contiguous f32 CPU weights take `adamw_cpu`'s two passes (off only in tests,
    /// which check it against the tensor ops).
    cpu_passes: bool,
}

impl AdamW {
    /// The optimizer of `config`'s `adam_beta1`, `adam_beta2`, `adam_eps` and
    /// `weight_decay`.
    pub fn new(config: &TrainingConfig) -> AdamW {
        AdamW {
            moments: HashMap::new(),
            beta1: config.adam_beta1,
            beta2: config.adam_beta2,
            eps: config.adam_eps,
            weight_decay: config.weight_decay,
            block_elements: ADAMW_BLOCK_ELEMENTS,
            cpu_passes: true,
        }
    }

    /// Updates `var` and its moments in place: on the CPU in two passes over the elements
    /// (`adamw_cpu`), elsewhere a block of rows at a time, so that no temporary is larger than
    /// a block, where whole-tensor ops would make several copies of the 128,100 × 768
    /// embedding table on every step.
    /// `grad_factor` multiplies the gradient first (loss unscaling and clipping); `decays`
    /// says whether the weight takes the weight decay.
    pub fn step(
        &mut self,
        name: &str,
        var: &Var,
        grad: &Tensor,
        (grad_factor, lr): (f64, f64),
        decays: bool,
    ) -> Result<()> {
        let state = match self.moments.get_mut(name) {
            Some(state) => state,
            None => self.moments.entry(name.to_string()).or_insert(Moments {
                values: Tensor::zeros([&[2], grad.dims()].concat(), grad.dtype(), grad.device())?,
                steps: 0,
            }),
        };
        state.steps += 1;
        let hyper = adamw_cpu::Hyper {
            grad_factor,
            beta1: self.beta1,
            beta2: self.beta2,
            first_correction: 1.0 - self.beta1.powi(state.steps),
            second_correction: 1.0 - self.beta2.powi(state.steps),
            eps: self.eps,
            lr,
            decay: if decays { self.weight_decay } else { 0.0 },
        };
        let weights = var.as_tensor();
        if self.cpu_passes {
            if let Some(result) = adamw_cpu::step(weights, &state.values, grad, &hyper) {
                return Ok(result?);
            }
        }
        let (first_all, second_all) = (state.values.get(0)?, state.values.get(1)?);
        let rows = weights.dim(0)?.max(1);
        let block = (self.block_elements / (weights.elem_count() / rows).max(1)).max(1);
        for start in (0..rows).step_by(block) {
            let len = block.min(rows - start);
            let part = |t: &Tensor| t.narrow(0, start, len);
            let g = (part(grad)? * grad_factor)?;
            let first = ((part(&first_all)? * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let second = ((part(&second_all)? * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&first / hyper.first_correction)?
                / ((&second / hyper.second_correction)?.sqrt()? + self.eps)?)?;
            let next = ((part(weights)? * (1.0 - lr * hyper.decay))? - (update * lr)?)?;
            state
                .values
                .slice_set(&Tensor::stack(&[first, second], 0)?, 1, start)?;
            weights.slice_set(&next, 0, start)?;
        }
        Ok(())
    }
}

/// Elements per block of an in-place AdamW update (4 MB in f32).
const ADAMW_BLOCK_ELEMENTS: usize = 1 << 20;

/// Cross-entropy with label smoothing, averaged over the rows.
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &[Outcome],
    smoothing: f64,
) -> Result<Tensor> {
    let off = smoothing / 3.0;
    let targets: Vec<f32> = labels
        .iter()
        .flat_map(|label| {
            let mut row = [off as f32; 3];
            row[label.index()] += (1.0 - smoothing) as f32;
            row
        })
        .collect();
    let targets = Tensor::from_vec(targets, (labels.len(), 3), logits.device())?;
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(((log_probs * targets)?.sum_all()?.neg()? / labels.len() as f64)?)
}

/// What [`fit_fold`] needs of a member's model. The DeBERTa classifier (every weight) and the
/// LLM member (LoRA adapters on a frozen decoder) both train through it, so that they share
/// the optimizer, schedule, accumulation, clipping, loss scaling, swap augmentation, early
/// stopping and divergence checks.
///
/// Rows are [`EncodedPair`]s whose views hold one sequence (or two, for DeBERTa's siamese
/// layout); a model's logits are `[views, 3]` in f32.
pub trait FoldModel {
    /// The training settings.
    fn training_config(&self) -> &TrainingConfig;
    fn device(&self) -> &Device;
    /// The weights updated at optimizer step `step`, with their names, sorted by name.
    fn trained(&self, step: usize) -> Vec<(String, Var)>;
    /// The learning rate of weight `name` before the schedule's factor.
    fn learning_rate(&self, name: &str) -> f64;
    /// Whether weight `name` takes AdamW's weight decay.
    fn decays(&self, name: &str) -> bool;
    /// The config keys whose learning rates to lower when training diverges at `step`.
    fn rates_to_lower(&self, step: usize) -> Vec<Setting>;
    /// Logits of `views` recorded for the backward pass to the weights `trained(step)`
    /// gives, with dropout masks drawn from `dropout`.
    fn training_logits(
        &self,
        views: &[&[Vec<u32>]],
        step: usize,
        dropout: &DropoutRng,
    ) -> Result<Tensor>;
    /// Weight gradients that gradient-checkpointed layers found in the backward passes since
    /// the last call (candle's gradient store cannot hold them: see [`crate::checkpointed`]),
    /// by weight.
    fn take_checkpoint_grads(&self) -> HashMap<TensorId, Tensor>;
    /// Logits of `views` for prediction: no graph is recorded.
    fn prediction_logits(&self, views: &[&[Vec<u32>]]) -> Result<Tensor>;
    /// A copy of the weights training changes, by name: how the best checkpoint is kept.
    fn snapshot(&self) -> Result<HashMap<String, Tensor>>;
    fn restore(&self, snapshot: &HashMap<String, Tensor>) -> Result<()>;
    /// The estimated memory of a fold of `rows`.
    fn training_memory(&self, rows: FoldRows) -> MemoryEstimate;
}

/// What a fold's training memory depends on of its rows.
#[derive(Clone, Copy, Debug)]
pub struct FoldRows {
    /// Training rows.
    pub train: usize,
    /// Rows that pick the checkpoint.
    pub valid: usize,
    /// Tokens in the longest sequence of either: the padded width of the widest batch.
    pub longest: usize,
}

impl FoldRows {
    pub fn of<P: Borrow<EncodedPair>>(train: &[P], valid: &[P]) -> FoldRows {
        FoldRows {
            train: train.len(),
            valid: valid.len(),
            longest: train
                .iter()
                .chain(valid)
                .map(|row| row.borrow().longest())
                .max()
                .unwrap_or(0),
        }
    }

    /// The most held-out rows one prediction batch takes at the longest row's width: the
    /// token budget's worth ([`predict_logits`]). Shorter rows share a batch more, but its
    /// tokens stay within the budget and its attention within this many rows at this width.
    pub fn prediction_rows(&self, config: &TrainingConfig) -> usize {
        (config.prediction_tokens() / self.longest.max(1)).clamp(1, self.valid.max(1))
    }
}

/// Swap-averaged logits of `encoded` rows: the log of the mean of p(x) and the mirrored
/// p(swapped x). Rows are sorted by length and batched by tokens, not rows
/// ([`token_batches`]): a batch holds at most `token_budget` tokens once padded to its longest
/// row ([`TrainingConfig::prediction_tokens`]), so short rows share a batch and a long one
/// gets it alone, as the LMSYS winners predicted. Both orders of a row run in one batch, in an
/// order fixed by their token ids, so exchanging A and B in the input exchanges the first two
/// outputs exactly.
pub fn predict_logits<P: Borrow<EncodedPair>>(
    model: &impl FoldModel,
    encoded: &[P],
    token_budget: usize,
) -> Result<Vec<[f32; 3]>> {
    // Rows sorted by length (ties by position) to limit padding; a row's length does not
    // change when A and B are exchanged, so neither does the batching.
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| (encoded[i].borrow().longest(), i));
    let lengths: Vec<usize> = order
        .iter()
        .map(|&i| encoded[i].borrow().longest())
        .collect();
    let mut logits = vec![[0f32; 3]; encoded.len()];
    for range in token_batches(&lengths, token_budget) {
        let rows = &order[range];
        let mut views: Vec<&[Vec<u32>]> = Vec::with_capacity(2 * rows.len());
        let mut given_first = Vec::with_capacity(rows.len());
        for &row in rows {
            let pair = encoded[row].borrow();
            let first = pair.as_given <= pair.swapped;
            given_first.push(first);
            views.push(pair.view(!first));
            views.push(pair.view(first));
        }
        let probs = candle_nn::ops::softmax_last_dim(&model.prediction_logits(&views)?)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        for (k, &row) in rows.iter().enumerate() {
            let (a, b) = (to_probs(&probs[2 * k]), to_probs(&probs[2 * k + 1]));
            let (given, swapped) = if given_first[k] { (a, b) } else { (b, a) };
            logits[row] =
                swap_average(given, swapped).map(|p| p.max(f64::MIN_POSITIVE).ln() as f32);
        }
    }
    Ok(logits)
}

/// Consecutive runs of rows whose `lengths` are sorted ascending, each run as long as its
/// rows, padded to its last (longest) one, fit in `budget` tokens and padding stays at most a
/// fifth of them; a row longer than the budget makes a run of its own. Every row is in exactly
/// one run, in order. Padding is computed for nothing: with 8 rows of 200–2,000 tokens, runs
/// filled to the budget alone computed 35% more tokens and took 1.5× as long on the CPU
/// (BENCHMARKS.md). Sorted rows of real data lie close, so their runs still fill the budget.
fn token_batches(lengths: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < lengths.len() {
        let mut end = start + 1;
        let mut real = lengths[start];
        while end < lengths.len() {
            let padded = (end + 1 - start) * lengths[end];
            if padded > budget || 4 * padded > 5 * (real + lengths[end]) {
                break;
            }
            real += lengths[end];
            end += 1;
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

fn to_probs(row: &[f64]) -> Probs {
    [row[0], row[1], row[2]]
}

/// Trains `model` on the training rows, evaluating on the held-out rows after every epoch
/// (and every `eval_every_steps`); stops after `patience` evaluations without improvement and
/// leaves the model at its best checkpoint. Rows are given as they are held (`EncodedPair`s or
/// references to them), so that a fold's rows need not be copied out of all the rows.
pub fn fit_fold<P: Borrow<EncodedPair>>(
    model: &mut impl FoldModel,
    train: &[P],
    train_labels: &[Outcome],
    valid: &[P],
    valid_labels: &[Outcome],
    fold: usize,
) -> Result<FoldResult> {
    if train.len() != train_labels.len() || valid.len() != valid_labels.len() {
        return Err(Error::Invalid("rows and labels differ in number".into()));
    }
    if train.is_empty() || valid.is_empty() {
        return Err(Error::Invalid(format!(
            "fold {fold} has no training or no held-out rows"
        )));
    }
    let started = Instant::now();
    let config = model.training_config().clone();
    if config.memory_check {
        let estimate = model.training_memory(FoldRows::of(train, valid));
        check_memory(&estimate, free_memory(model.device())?, &config, fold)?;
    }
    let seed = config.seed.wrapping_add(fold as u64);
    if !model.device().is_cpu() {
        model.device().set_seed(seed)?;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let dropout_rng = DropoutRng::new(StdRng::seed_from_u64(seed ^ 0x5eed));
    let rows_per_step = config.batch_size * config.grad_accumulation;
    let steps_per_epoch = train.len().div_ceil(rows_per_step);
    let total_steps = steps_per_epoch * config.epochs;

    let mut optimizer = AdamW::new(&config);
    let mut scaler = LossScaler::new(&config);
    let mut step = 0usize;
    // Steps whose update was applied: before the first, a non-finite loss is the model's own.
    let mut updates = 0usize;
    let mut history = Vec::new();
    let mut best: Option<Checkpoint> = None;
    let mut since_best = 0usize;
    let (mut loss_sum, mut loss_count) = (0.0f64, 0usize);
    let mut eval_seconds = 0.0;

    'epochs: for epoch in 0..config.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        for step_rows in order.chunks(rows_per_step) {
            let trained = model.trained(step);
            let diverged = |problem: String| diverged(fold, step, problem, updates, model);
            let mut grads: Vec<Option<Tensor>> = vec![None; trained.len()];
            for micro in step_rows.chunks(config.batch_size) {
                let mut labels = Vec::with_capacity(micro.len());
                let mut views = Vec::with_capacity(micro.len());
                for &row in micro {
                    let swap = rng.random::<f64>() < config.swap_probability;
                    views.push(train[row].borrow().view(swap));
                    labels.push(if swap {
                        train_labels[row].swapped()
                    } else {
                        train_labels[row]
                    });
                }
                // Weighted so that the accumulated gradient is that of the step's mean loss.
                let weight = micro.len() as f64 / step_rows.len() as f64;
                let logits = model.training_logits(&views, step, &dropout_rng)?;
                let loss = accumulate_gradients(
                    model,
                    &logits,
                    &labels,
                    weight * scaler.scale,
                    &trained,
                    &mut grads,
                )?;
                // In f16 an overflow is the loss scaler's to handle; anywhere else a non-finite
                // loss means the run has diverged, and its predictions would be worthless.
                if !loss.is_finite() && config.precision != Precision::F16 {
                    return Err(diverged(format!("the training loss is {loss}")));
                }
                loss_sum += loss * micro.len() as f64;
                loss_count += micro.len();
            }
            let factor = lr_factor(step, total_steps, &config);
            let applied = apply_gradients(
                &mut optimizer,
                &mut scaler,
                (&trained, &grads),
                config.max_grad_norm,
                |name| (model.learning_rate(name) * factor, model.decays(name)),
                diverged,
            )?;
            updates += usize::from(applied);
            step += 1;
            let epoch_end = step.is_multiple_of(steps_per_epoch);
            let scheduled =
                config.eval_every_steps > 0 && step.is_multiple_of(config.eval_every_steps);
            if epoch_end || scheduled {
                let evaluating = Instant::now();
                let valid_logits = predict_logits(model, valid, config.prediction_tokens())?;
                let probs: Vec<_> = valid_logits.iter().map(probs_from_logits).collect();
                let valid_log_loss = log_loss(valid_labels, &probs);
                history.push(EvalPoint {
                    epoch,
                    step,
                    train_loss: loss_sum / loss_count.max(1) as f64,
                    valid_log_loss,
                });
                (loss_sum, loss_count) = (0.0, 0);
                if best.as_ref().is_none_or(|b| valid_log_loss < b.log_loss) {
                    best = Some(Checkpoint {
                        log_loss: valid_log_loss,
                        step,
                        valid_logits,
                        weights: model.snapshot()?,
                    });
                    since_best = 0;
                } else {
                    since_best += 1;
                }
                eval_seconds += evaluating.elapsed().as_secs_f64();
                if since_best >= config.patience.max(1) {
                    break 'epochs;
                }
            }
        }
    }
    let best =
        best.ok_or_else(|| Error::Invalid("training ran no evaluation (epochs = 0?)".into()))?;
    model.restore(&best.weights)?;
    Ok(FoldResult {
        best_log_loss: best.log_loss,
        best_step: best.step,
        steps: step,
        history,
        valid_logits: best.valid_logits,
        train_seconds: started.elapsed().as_secs_f64(),
        eval_seconds,
        skipped_steps: scaler.skipped_steps,
        loss_scale: scaler.enabled.then_some(scaler),
    })
}

/// Consecutive optimizer steps with non-finite gradients after which an f32 or bf16 fold
/// stops. One such step is skipped, as GradScaler skips an f16 overflow, so that a single
/// extreme batch does not end a run; three in a row, over shuffled batches, mean that the
/// weights themselves have diverged, and skipping on would only train nothing for hours.
const MAX_NON_FINITE_STEPS: usize = 3;

/// Applies one optimizer step's gradients (of the loss times `scaler.scale`) at each weight's
/// learning rate and decay, `rate(name)`: unscaling and clipping are one factor that the optimizer applies
/// block by block, rather than a copy of every gradient. A step whose gradients are not finite
/// is skipped, weights and moments untouched (in f16 the scale is also halved); without loss
/// scaling, the [`MAX_NON_FINITE_STEPS`]th such step in a row is the error `diverged` makes.
/// Returns whether the step was applied.
fn apply_gradients(
    optimizer: &mut AdamW,
    scaler: &mut LossScaler,
    (trained, grads): (&[(String, Var)], &[Option<Tensor>]),
    max_grad_norm: f64,
    rate: impl Fn(&str) -> (f64, bool),
    diverged: impl FnOnce(String) -> Error,
) -> Result<bool> {
    let scale = scaler.scale;
    let squares = squared_norm(grads)? / (scale * scale);
    if !scaler.update(squares.is_finite()) {
        if !scaler.enabled && scaler.non_finite_in_a_row >= MAX_NON_FINITE_STEPS {
            return Err(diverged(format!(
                "{MAX_NON_FINITE_STEPS} optimizer steps in a row had non-finite gradients \
                 (squared norm {squares}) and were skipped"
            )));
        }
        return Ok(false);
    }
    let grad_factor = clip_factor(squares, max_grad_norm) / scale;
    for ((name, var), grad) in trained.iter().zip(grads) {
        let Some(grad) = grad else { continue };
        let (lr, decays) = rate(name);
        optimizer.step(name, var, grad, (grad_factor, lr), decays)?;
    }
    Ok(true)
}

/// The error for a fold whose loss or gradients stopped being finite. Before any update the
/// model diverges as loaded, so its folder is to blame; after, the learning rates of the
/// weights being trained are the usual cause, and are named to be lowered.
pub fn diverged(
    fold: usize,
    step: usize,
    problem: String,
    updates: usize,
    model: &impl FoldModel,
) -> Error {
    let at = format!("fold {fold}, step {step}: {problem}");
    if updates == 0 {
        return Error::Diverged {
            message: format!(
                "{at} before any update: the model as loaded gives it; check the model \
                 folder's weights"
            ),
            settings: Vec::new(),
        };
    }
    Error::Diverged {
        message: at,
        settings: model.rates_to_lower(step),
    }
}

/// Refuses a fold whose estimated allocations exceed the free memory, in one line naming the
/// settings that shrink them.
fn check_memory(
    estimate: &MemoryEstimate,
    free: Option<u64>,
    config: &TrainingConfig,
    fold: usize,
) -> Result<()> {
    let Some(free) = free.filter(|&free| estimate.to_allocate() > free) else {
        return Ok(());
    };
    let mut lower = vec![
        format!("batch_size ({})", config.batch_size),
        format!("eval_batch_size ({})", config.eval_batch_size),
        format!("max_len ({})", config.max_len),
    ];
    if !config.gradient_checkpointing {
        lower.push("or set gradient_checkpointing = true".into());
    }
    if config.precision == Precision::F32 {
        lower.push("or train in precision bf16 or f16 (GPU)".into());
    }
    Err(Error::Invalid(format!(
        "fold {fold}: training needs about {} beyond the loaded weights (AdamW moments {}, \
         gradients {}, best-checkpoint copy {}, activations {}), but {} is free; lower {}; \
         memory_check = false trains anyway",
        gib(estimate.to_allocate()),
        gib(estimate.optimizer),
        gib(estimate.gradients),
        gib(estimate.checkpoint),
        gib(estimate.activations),
        gib(free),
        lower.join(", ")
    )))
}

/// The squared global L2 norm of the gradients: infinite or NaN after an overflow.
fn squared_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut squares = 0.0f64;
    for grad in grads.iter().flatten() {
        // Summed in the gradients' f32: an f64 copy would cost twice the embedding table.
        squares += grad
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(squares)
}

/// The factor that scales gradients of squared norm `squares` to a global L2 norm of at most
/// `max_norm`.
fn clip_factor(squares: f64, max_norm: f64) -> f64 {
    let norm = squares.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Runs the backward pass of one micro-batch's `logits` and adds the gradients of `weight` ×
/// its mean loss to `grads` (one entry per trained weight, in order). Returns the mean loss.
pub fn accumulate_gradients(
    model: &impl FoldModel,
    logits: &Tensor,
    labels: &[Outcome],
    weight: f64,
    trained: &[(String, Var)],
    grads: &mut [Option<Tensor>],
) -> Result<f64> {
    let smoothing = model.training_config().label_smoothing;
    let loss = smoothed_cross_entropy(logits, labels, smoothing)?;
    let mean = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let mut store = (loss * weight)?.backward()?;
    let mut checkpointed = model.take_checkpoint_grads();
    for ((_, var), sum) in trained.iter().zip(grads.iter_mut()) {
        // Detached: candle returns gradients recorded as ops on the activations, which would
        // otherwise stay alive until the optimizer step.
        let grad = store
            .remove(var.as_tensor())
            .map(|g| g.detach())
            .or_else(|| checkpointed.remove(&var.id()));
        if let Some(grad) = grad {
            *sum = Some(match sum.take() {
                Some(s) => (s + grad)?,
                None => grad,
            });
        }
    }
    Ok(mean)
}

/// Dynamic loss scaling for f16, as PyTorch's GradScaler: the loss is multiplied by the scale
/// before the backward pass so that small gradients survive in f16; a step whose gradients
/// overflow is skipped and the scale halved, and the scale doubles after
/// `LOSS_SCALE_GROWTH_INTERVAL` clean steps in a row. Off (scale 1) in f32 and bf16.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LossScaler {
    pub scale: f64,
    pub skipped_steps: usize,
    #[serde(skip)]
    clean_steps: usize,
    /// Steps in a row whose gradients were not finite.
    #[serde(skip)]
    non_finite_in_a_row: usize,
    #[serde(skip)]
    enabled: bool,
}

/// PyTorch GradScaler's `growth_interval`.
const LOSS_SCALE_GROWTH_INTERVAL: usize = 2000;

impl LossScaler {
    fn new(config: &TrainingConfig) -> LossScaler {
        let enabled = config.precision == Precision::F16;
        LossScaler {
            scale: if enabled { config.loss_scale } else { 1.0 },
            skipped_steps: 0,
            clean_steps: 0,
            non_finite_in_a_row: 0,
            enabled,
        }
    }

    /// Records whether a step's gradients were finite; returns whether its update may be
    /// applied. Off, it only counts the non-finite steps, which are skipped all the same.
    fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.skipped_steps += 1;
            self.non_finite_in_a_row += 1;
        } else {
            self.non_finite_in_a_row = 0;
        }
        if !self.enabled {
            return finite;
        }
        if !finite {
            self.scale /= 2.0;
            self.clean_steps = 0;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps == LOSS_SCALE_GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_and_label_smoothing_match_pytorch() {
        // scripts/training_reference.py, torch 2.15.0: clip_grad_norm_(max_norm=1.0) and
        // CrossEntropyLoss(label_smoothing=0.1).
        let device = Device::Cpu;
        let grads = [
            Some(Tensor::from_vec(vec![0.6f32, -0.8, 1.2, 0.0], (2, 2), &device).unwrap()),
            None,
            Some(Tensor::from_vec(vec![0.5f32, -0.25, 2.0], 3, &device).unwrap()),
        ];
        let squares = squared_norm(&grads).unwrap();
        assert!(
            (squares.sqrt() - 2.598_557_234).abs() < 1e-6,
            "{}",
            squares.sqrt()
        );
        let factor = clip_factor(squares, 1.0);
        let clipped: Vec<f32> = grads
            .iter()
            .flatten()
            .flat_map(|g| {
                (g * factor)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        let expected = [
            0.230_897_28,
            -0.307_863_03,
            0.461_794_56,
            0.0,
            0.192_414_39,
            -0.096_207_19,
            0.769_657_55,
        ];
        for (c, e) in clipped.iter().zip(expected) {
            assert!((c - e).abs() < 1e-6, "{clipped:?}");
        }
        assert_eq!(
            clip_factor(0.25, 1.0),
            1.0,
            "a norm below the bound is left alone"
        );

        let logits =
            Tensor::from_vec(vec![1.0f32, -0.5, 0.2, 0.3, 0.3, -1.2], (2, 3), &device).unwrap();
        let loss = smoothed_cross_entropy(&logits, &[Outcome::A, Outcome::Tie], 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((loss - 1.394_939).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn adamw_steps_in_place_as_pytorch_does() {
        // Two steps of torch.optim.AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-6,
        // weight_decay=0.1): scripts/training_reference.py, torch 2.15.0.
        let expected = [
            0.485_008_4_f32,
            -0.991_672_2,
            1.988_560_8,
            0.086_354_05,
            0.207_827_7,
            -0.316_090_5,
        ];
        let config = TrainingConfig {
            weight_decay: 0.1,
            ..TrainingConfig::default()
        };
        let device = Device::Cpu;
        let grads = [
            [0.3f32, -0.2, 0.0, 1.5, -0.7, 0.05],
            [-0.1, 0.4, 0.2, -0.6, 0.9, 0.0],
        ];
        // The CPU passes, and the tensor ops in blocks of one row (so that the in-place block
        // updates are exercised).
        for cpu_passes in [true, false] {
            let weight =
                Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.1, 0.2, -0.3], (3, 2), &device).unwrap();
            let mut optimizer = AdamW::new(&config);
            optimizer.cpu_passes = cpu_passes;
            optimizer.block_elements = 2;
            for grad in grads {
                // The factor halves a doubled gradient: clipping's path.
                let doubled =
                    Tensor::from_vec(grad.map(|g| 2.0 * g).to_vec(), (3, 2), &device).unwrap();
                optimizer
                    .step("w.weight", &weight, &doubled, (0.5, 0.01), true)
                    .unwrap();
            }
            let got = weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (g, e) in got.iter().zip(expected) {
                assert!(
                    (g - e).abs() < 1e-6,
                    "{got:?} vs {expected:?} ({cpu_passes})"
                );
            }
        }
    }

    /// The CPU passes give the tensor ops' weights and moments exactly, over several steps of
    /// a weight larger than a parallel work item, with and without decay.
    #[test]
    fn adamw_cpu_passes_equal_the_tensor_ops() {
        let config = TrainingConfig {
            weight_decay: 0.01,
            ..TrainingConfig::default()
        };
        let shape = (70_000, 2);
        let start = crate::testing::random(&[shape.0, shape.1], 1)
            .as_tensor()
            .detach();
        let run = |cpu_passes: bool| {
            let weight = Var::from_tensor(&start).unwrap();
            let mut optimizer = AdamW::new(&config);
            optimizer.cpu_passes = cpu_passes;
            for step in 0..3u64 {
                let grad = crate::testing::random(&[shape.0, shape.1], 10 + step);
                let grad = grad.as_tensor().detach();
                optimizer
                    .step("w", &weight, &grad, (0.7, 2e-3), step != 1)
                    .unwrap();
            }
            let moments = values_of(&optimizer.moments["w"].values);
            (values_of(weight.as_tensor()), moments)
        };
        let (passes, ops) = (run(true), run(false));
        assert!(passes.0 != values_of(&start), "the weights did not move");
        assert!(passes == ops, "the CPU passes and the tensor ops differ");
    }

    fn values_of(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The bits of a tensor, for bit-identity checks (NaN-safe, unlike float equality).
    fn bits(t: &Tensor) -> Vec<u32> {
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Without loss scaling (f32, bf16), a step with a NaN or infinite gradient leaves the
    /// weights and the AdamW moments exactly as they were; the third such step in a row stops
    /// the fold, and a finite step in between starts the count again.
    #[test]
    fn non_finite_gradients_skip_the_step_then_stop_the_fold() {
        let config = TrainingConfig::default();
        let device = Device::Cpu;
        let weight = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.1], (2, 2), &device).unwrap();
        let trained = vec![("w.weight".to_string(), weight.clone())];
        let mut optimizer = AdamW::new(&config);
        let mut scaler = LossScaler::new(&config);
        let gradient = |values: [f32; 4]| {
            [Some(
                Tensor::from_vec(values.to_vec(), (2, 2), &device).unwrap(),
            )]
        };
        let mut step = |values: [f32; 4], optimizer: &mut AdamW| {
            apply_gradients(
                optimizer,
                &mut scaler,
                (&trained, &gradient(values)),
                1.0,
                |_| (0.01, true),
                Error::Invalid,
            )
        };
        let finite = [0.1, -0.2, 0.3, 0.0];
        assert!(step(finite, &mut optimizer).unwrap());
        let state = |optimizer: &AdamW| {
            let moments = &optimizer.moments["w.weight"];
            (
                bits(weight.as_tensor()),
                bits(&moments.values),
                moments.steps,
            )
        };
        let before = state(&optimizer);
        for bad in [f32::NAN, f32::INFINITY] {
            assert!(!step([0.1, bad, 0.3, 0.0], &mut optimizer).unwrap());
            assert_eq!(
                state(&optimizer),
                before,
                "a step with {bad} moved something"
            );
        }
        assert!(step(finite, &mut optimizer).unwrap());
        assert_ne!(state(&optimizer), before);
        assert!(!step([f32::NAN; 4], &mut optimizer).unwrap());
        assert!(!step([f32::NEG_INFINITY; 4], &mut optimizer).unwrap());
        let error = step([f32::NAN; 4], &mut optimizer).unwrap_err().to_string();
        assert!(
            error.starts_with("3 optimizer steps in a row had non-finite gradients"),
            "{error}"
        );
    }

    /// GradScaler's schedule, exactly: halve on an overflow (and start the clean count again),
    /// double after `LOSS_SCALE_GROWTH_INTERVAL` clean steps in a row.
    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_the_growth_interval() {
        let config = TrainingConfig {
            precision: Precision::F16,
            loss_scale: 1024.0,
            ..TrainingConfig::default()
        };
        let mut scaler = LossScaler::new(&config);
        let clean = |scaler: &mut LossScaler, steps: usize| {
            for _ in 0..steps {
                assert!(scaler.update(true));
            }
        };
        clean(&mut scaler, LOSS_SCALE_GROWTH_INTERVAL - 1);
        assert_eq!(scaler.scale, 1024.0);
        clean(&mut scaler, 1);
        assert_eq!(scaler.scale, 2048.0);
        // An overflow just before the next doubling halves the scale and restarts the count.
        clean(&mut scaler, LOSS_SCALE_GROWTH_INTERVAL - 1);
        assert!(!scaler.update(false));
        assert_eq!(scaler.scale, 1024.0);
        clean(&mut scaler, LOSS_SCALE_GROWTH_INTERVAL - 1);
        assert_eq!(scaler.scale, 1024.0);
        clean(&mut scaler, 1);
        assert_eq!(scaler.scale, 2048.0);
        clean(&mut scaler, 2 * LOSS_SCALE_GROWTH_INTERVAL);
        assert_eq!((scaler.scale, scaler.skipped_steps), (8192.0, 1));
    }

    #[test]
    fn too_little_free_memory_is_refused_naming_the_settings() {
        let estimate = MemoryEstimate {
            weights: 1 << 30,
            optimizer: 2 << 30,
            gradients: 1 << 30,
            checkpoint: 1 << 30,
            activations: 3 << 30,
        };
        let config = TrainingConfig::default();
        assert!(check_memory(&estimate, Some(7 << 30), &config, 0).is_ok());
        assert!(check_memory(&estimate, None, &config, 0).is_ok());
        let error = check_memory(&estimate, Some((7 << 30) - 1), &config, 2)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "fold 2: training needs about 7.00 GiB beyond the loaded weights (AdamW moments \
             2.00 GiB, gradients 1.00 GiB, best-checkpoint copy 1.00 GiB, activations 3.00 GiB), \
             but 7.00 GiB is free; lower batch_size (4), eval_batch_size (8), max_len (512), or \
             set gradient_checkpointing = true, or train in precision bf16 or f16 (GPU); \
             memory_check = false trains anyway"
        );
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let config = TrainingConfig {
            warmup_ratio: 0.1,
            ..TrainingConfig::default()
        };
        assert!((lr_factor(0, 100, &config) - 0.1).abs() < 1e-12);
        assert!((lr_factor(9, 100, &config) - 1.0).abs() < 1e-12);
        assert!((lr_factor(10, 100, &config) - 1.0).abs() < 1e-12);
        assert!(lr_factor(99, 100, &config) < 0.01);
        let linear = TrainingConfig {
            schedule: Schedule::Linear,
            ..config
        };
        assert!((lr_factor(55, 100, &linear) - 0.5).abs() < 1e-12);
    }
    /// Sorted rows go to runs that fit the budget once padded, with at most a fifth of padding;
    /// a row over the budget goes alone.
    #[test]
    fn token_batches_fill_the_budget_in_order() {
        let runs = token_batches(&[3, 5, 5, 9, 20, 20], 16);
        assert_eq!(runs, [0..3, 3..4, 4..5, 5..6]);
        // 2 and 10 would fit 100 tokens, but as 8 of 20 padding.
        assert_eq!(token_batches(&[2, 10, 10], 100), [0..1, 1..3]);
        let whole = token_batches(&[4, 4, 4, 4], 16);
        assert_eq!((whole.len(), whole[0].clone()), (1, 0..4));
        assert_eq!(token_batches(&[], 16), Vec::<std::ops::Range<usize>>::new());
        // Every row exactly once, and no run over the budget unless it is one row.
        let lengths: Vec<usize> = (0..200).map(|i| 1 + (i * i) % 97).collect::<Vec<_>>();
        let mut sorted = lengths.clone();
        sorted.sort();
        let runs = token_batches(&sorted, 300);
        assert_eq!(runs.first().unwrap().start, 0);
        assert_eq!(runs.last().unwrap().end, sorted.len());
        for pair in runs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for run in &runs {
            let padded = run.len() * sorted[run.end - 1];
            let real: usize = sorted[run.clone()].iter().sum();
            assert!(
                run.len() == 1 || (padded <= 300 && 4 * padded <= 5 * real),
                "{run:?}"
            );
        }
    }
}
