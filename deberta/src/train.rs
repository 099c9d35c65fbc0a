//! Fine-tuning on one fold: AdamW with decoupled weight decay, warm-up then cosine or linear
//! decay, gradient accumulation, global-norm clipping, label smoothing, staged unfreezing,
//! A/B swap augmentation and early stopping on the held-out log loss.
use std::borrow::Borrow;
use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, TensorId, Var, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::memory::{self, gib, MemoryEstimate, TrainingShape};
use crate::model::{Layout, Pass, HEAD_PREFIXES};
use crate::ops::DropoutRng;
use crate::{free_memory, Error, Result, Setting};
use crate::{probs_from_logits, Classifier, EncodedPair, Precision, Schedule, TransformerConfig};
use ensembles::metrics::log_loss;
use ensembles::outcome::swap_average;
use ensembles::{Outcome, Probs};

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

/// Which parameters a training stage updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    HeadOnly,
    TopLayers(usize),
    All,
}

impl Stage {
    fn at(step: usize, config: &TransformerConfig, layers: usize) -> Stage {
        let unfreeze = &config.unfreeze;
        if step < unfreeze.head_only_steps {
            Stage::HeadOnly
        } else if step < unfreeze.head_only_steps + unfreeze.top_layers_steps
            && unfreeze.top_layers < layers
        {
            Stage::TopLayers(unfreeze.top_layers)
        } else {
            Stage::All
        }
    }

    fn first_trained_layer(self, layers: usize) -> usize {
        match self {
            Stage::HeadOnly => layers,
            Stage::TopLayers(k) => layers - k,
            Stage::All => 0,
        }
    }

    /// Whether the weight `name` is updated in this stage.
    fn trains(self, name: &str, layers: usize) -> bool {
        match Part::of(name) {
            Part::Head => true,
            _ if self == Stage::All => true,
            Part::Layer(i) => i >= self.first_trained_layer(layers),
            Part::Embeddings => false,
        }
    }
}

/// Where a weight sits, for unfreezing and layer-wise learning rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Head,
    Layer(usize),
    /// Word and relative embeddings and the norms around them: everything below layer 0.
    Embeddings,
}

impl Part {
    fn of(name: &str) -> Part {
        if HEAD_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Part::Head;
        }
        name.strip_prefix("deberta.encoder.layer.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .map_or(Part::Embeddings, Part::Layer)
    }

    /// The learning rate before the schedule: the head's own, the top layer's, and
    /// `layer_lr_decay` per layer further down.
    fn learning_rate(self, config: &TransformerConfig, layers: usize) -> f64 {
        let depth = match self {
            Part::Head => return config.head_learning_rate,
            Part::Layer(i) => layers.saturating_sub(i + 1),
            Part::Embeddings => layers,
        };
        config.learning_rate * config.layer_lr_decay.powi(depth as i32)
    }
}

/// Learning-rate multiplier at an optimizer step: linear warm-up, then decay to zero.
fn lr_factor(step: usize, total: usize, config: &TransformerConfig) -> f64 {
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

struct Moments {
    first: Tensor,
    second: Tensor,
    steps: i32,
}

/// AdamW (decoupled weight decay, bias-corrected moments, as torch.optim.AdamW) over named
/// variables; moments are kept by name so that layers unfrozen later start their own. Shared
/// with the LLM member, whose LoRA weights it updates.
pub struct AdamW {
    moments: HashMap<String, Moments>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Elements per block of an in-place update.
    block_elements: usize,
}

impl AdamW {
    /// The optimizer of `config`'s `adam_beta1`, `adam_beta2`, `adam_eps` and
    /// `weight_decay`.
    pub fn new(config: &TransformerConfig) -> AdamW {
        AdamW {
            moments: HashMap::new(),
            beta1: config.adam_beta1,
            beta2: config.adam_beta2,
            eps: config.adam_eps,
            weight_decay: config.weight_decay,
            block_elements: ADAMW_BLOCK_ELEMENTS,
        }
    }

    /// Updates `var` and its moments in place, a block of rows at a time: no temporary is
    /// larger than a block, where whole-tensor ops would make several copies of the
    /// 128,100 × 768 embedding table on every step.
    /// `grad_factor` multiplies the gradient first (loss unscaling and clipping).
    pub fn step(
        &mut self,
        name: &str,
        var: &Var,
        grad: &Tensor,
        grad_factor: f64,
        lr: f64,
    ) -> Result<()> {
        let state = match self.moments.get_mut(name) {
            Some(state) => state,
            None => self.moments.entry(name.to_string()).or_insert(Moments {
                first: grad.zeros_like()?,
                second: grad.zeros_like()?,
                steps: 0,
            }),
        };
        state.steps += 1;
        let first_correction = 1.0 - self.beta1.powi(state.steps);
        let second_correction = 1.0 - self.beta2.powi(state.steps);
        // Biases and LayerNorm weights are not decayed (the usual BERT recipe).
        let decay = if name.ends_with("bias") || name.contains("LayerNorm") {
            0.0
        } else {
            self.weight_decay
        };
        let weights = var.as_tensor();
        let rows = weights.dim(0)?.max(1);
        let block = (self.block_elements / (weights.elem_count() / rows).max(1)).max(1);
        for start in (0..rows).step_by(block) {
            let len = block.min(rows - start);
            let part = |t: &Tensor| t.narrow(0, start, len);
            let g = (part(grad)? * grad_factor)?;
            let first = ((part(&state.first)? * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let second = ((part(&state.second)? * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&first / first_correction)?
                / ((&second / second_correction)?.sqrt()? + self.eps)?)?;
            let next = ((part(weights)? * (1.0 - lr * decay))? - (update * lr)?)?;
            state.first.slice_set(&first, 0, start)?;
            state.second.slice_set(&second, 0, start)?;
            weights.slice_set(&next, 0, start)?;
        }
        Ok(())
    }
}

/// Elements per block of an in-place AdamW update (4 MB in f32).
const ADAMW_BLOCK_ELEMENTS: usize = 1 << 20;

/// Cross-entropy with label smoothing, averaged over the rows.
fn smoothed_cross_entropy(logits: &Tensor, labels: &[Outcome], smoothing: f64) -> Result<Tensor> {
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

/// What [`fit_fold`] needs of a member's model. The DeBERTa [`Classifier`] and the LLM member
/// (LoRA adapters on a frozen decoder) both train through it, so that they share the
/// optimizer, schedule, accumulation, clipping, loss scaling, swap augmentation, early
/// stopping and divergence checks.
///
/// Rows are [`EncodedPair`]s whose views hold one sequence (or two, for DeBERTa's siamese
/// layout); a model's logits are `[views, 3]` in f32.
pub trait FoldModel {
    /// The training settings.
    fn training_config(&self) -> &TransformerConfig;
    fn device(&self) -> &Device;
    /// The weights updated at optimizer step `step`, with their names, sorted by name.
    fn trained(&self, step: usize) -> Vec<(String, Var)>;
    /// The learning rate of weight `name` before the schedule's factor.
    fn learning_rate(&self, name: &str) -> f64;
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
}

/// Swap-averaged logits of `encoded` rows, `batch_size` rows (both orders each) per batch:
/// the log of the mean of p(x) and the mirrored p(swapped x). Both orders of a row run in one
/// batch, in an order fixed by their token ids, so exchanging A and B in the input exchanges
/// the first two outputs exactly.
pub fn predict_logits<P: Borrow<EncodedPair>>(
    model: &impl FoldModel,
    encoded: &[P],
    batch_size: usize,
) -> Result<Vec<[f32; 3]>> {
    // Rows sorted by length (ties by position) to limit padding; a row's length does not
    // change when A and B are exchanged, so neither does the batching.
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| (encoded[i].borrow().longest(), i));
    let mut logits = vec![[0f32; 3]; encoded.len()];
    for rows in order.chunks(batch_size.max(1)) {
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
                &trained,
                &grads,
                config.max_grad_norm,
                |name| model.learning_rate(name) * factor,
                diverged,
            )?;
            updates += usize::from(applied);
            step += 1;
            let epoch_end = step.is_multiple_of(steps_per_epoch);
            let scheduled =
                config.eval_every_steps > 0 && step.is_multiple_of(config.eval_every_steps);
            if epoch_end || scheduled {
                let evaluating = Instant::now();
                let valid_logits = predict_logits(model, valid, config.eval_batch_size)?;
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
/// `learning_rate(name)`: unscaling and clipping are one factor that the optimizer applies
/// block by block, rather than a copy of every gradient. A step whose gradients are not finite
/// is skipped, weights and moments untouched (in f16 the scale is also halved); without loss
/// scaling, the [`MAX_NON_FINITE_STEPS`]th such step in a row is the error `diverged` makes.
/// Returns whether the step was applied.
fn apply_gradients(
    optimizer: &mut AdamW,
    scaler: &mut LossScaler,
    trained: &[(String, Var)],
    grads: &[Option<Tensor>],
    max_grad_norm: f64,
    learning_rate: impl Fn(&str) -> f64,
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
        optimizer.step(name, var, grad, grad_factor, learning_rate(name))?;
    }
    Ok(true)
}

/// The error for a fold whose loss or gradients stopped being finite. Before any update the
/// model diverges as loaded, so its folder is to blame; after, the learning rates of the
/// weights being trained are the usual cause, and are named to be lowered.
fn diverged(
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

impl FoldModel for Classifier {
    fn training_config(&self) -> &TransformerConfig {
        &self.config
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// The head, and the layers (and embeddings) that staged unfreezing has reached.
    fn trained(&self, step: usize) -> Vec<(String, Var)> {
        let layers = self.model.num_layers();
        let stage = Stage::at(step, &self.config, layers);
        let vars = self.vars.data().lock().expect("weights lock poisoned");
        let mut trained: Vec<(String, Var)> = vars
            .iter()
            .filter(|(name, _)| stage.trains(name, layers))
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        trained.sort_by(|a, b| a.0.cmp(&b.0));
        trained
    }

    fn learning_rate(&self, name: &str) -> f64 {
        Part::of(name).learning_rate(&self.config, self.model.num_layers())
    }

    fn rates_to_lower(&self, step: usize) -> Vec<Setting> {
        let setting = |key, value| Setting {
            key,
            value,
            source: None,
        };
        let mut settings = Vec::new();
        if Stage::at(step, &self.config, self.model.num_layers()) != Stage::HeadOnly {
            settings.push(setting("learning_rate", self.config.learning_rate));
        }
        settings.push(setting(
            "head_learning_rate",
            self.config.head_learning_rate,
        ));
        settings
    }

    fn training_logits(
        &self,
        views: &[&[Vec<u32>]],
        step: usize,
        dropout: &DropoutRng,
    ) -> Result<Tensor> {
        let layers = self.model.num_layers();
        let stage = Stage::at(step, &self.config, layers);
        let pass = Pass {
            dropout: Some(dropout),
            first_trained_layer: stage.first_trained_layer(layers),
            train_embeddings: stage == Stage::All,
            checkpoint: self.config.gradient_checkpointing,
        };
        self.forward_views(views, &pass)
    }

    fn take_checkpoint_grads(&self) -> HashMap<TensorId, Tensor> {
        self.model.take_checkpoint_grads()
    }

    fn prediction_logits(&self, views: &[&[Vec<u32>]]) -> Result<Tensor> {
        self.forward_views(views, &Pass::eval())
    }

    /// Every weight: staged unfreezing trains all of them by the end.
    fn snapshot(&self) -> Result<HashMap<String, Tensor>> {
        Classifier::snapshot(self)
    }

    fn restore(&self, snapshot: &HashMap<String, Tensor>) -> Result<()> {
        let vars = self.vars.data().lock().expect("weights lock poisoned");
        for (name, var) in vars.iter() {
            if let Some(saved) = snapshot.get(name) {
                var.set(saved)?;
            }
        }
        Ok(())
    }

    fn training_memory(&self, rows: FoldRows) -> MemoryEstimate {
        training_memory(self, rows)
    }
}

/// The estimated memory of training `classifier` on a fold of `rows` in the largest stage its
/// steps reach; the longest sequence sets the length.
pub fn training_memory(classifier: &Classifier, rows: FoldRows) -> MemoryEstimate {
    let config = classifier.config();
    let model = classifier.model.config();
    let layers = classifier.model.num_layers();
    let steps = rows
        .train
        .div_ceil(config.batch_size * config.grad_accumulation)
        * config.epochs;
    let stage = Stage::at(steps.saturating_sub(1), config, layers);
    let vars = classifier
        .vars
        .data()
        .lock()
        .expect("weights lock poisoned");
    let count = |keep: &dyn Fn(&str) -> bool| -> usize {
        vars.iter()
            .filter(|(name, _)| keep(name))
            .map(|(_, var)| var.elem_count())
            .sum()
    };
    let views = match classifier.model.layout() {
        Layout::Cross => 1,
        Layout::Siamese => 2,
    };
    memory::estimate(&TrainingShape {
        // Batches hold at most the rows there are.
        sequences: config.batch_size.min(rows.train) * views,
        eval_sequences: 2 * config.eval_batch_size.min(rows.valid) * views,
        len: rows.longest,
        hidden: model.hidden_size,
        intermediate: model.intermediate_size,
        heads: model.num_attention_heads,
        trained_layers: layers - stage.first_trained_layer(layers),
        layer_params: count(&|name| Part::of(name) == Part::Layer(0)),
        params: count(&|_| true),
        trained_params: count(&|name| stage.trains(name, layers)),
        trained_embedding_table: if stage == Stage::All {
            count(&|name| name == WORD_EMBEDDINGS)
        } else {
            0
        },
        precision: config.precision,
        checkpoint: config.gradient_checkpointing,
        accumulation: config.grad_accumulation,
    })
}

/// The weight whose gradient candle builds as a whole table (see [`TrainingShape`]).
const WORD_EMBEDDINGS: &str = "deberta.embeddings.word_embeddings.weight";

/// Refuses a fold whose estimated allocations exceed the free memory, in one line naming the
/// settings that shrink them.
fn check_memory(
    estimate: &MemoryEstimate,
    free: Option<u64>,
    config: &TransformerConfig,
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
fn accumulate_gradients(
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
    fn new(config: &TransformerConfig) -> LossScaler {
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
    use crate::ResponsePair;
    use candle_core::Device;

    const LABELS: [Outcome; 3] = [Outcome::A, Outcome::B, Outcome::Tie];

    /// The tiny fixture model, three encoded battles, and every weight by name.
    fn tiny_batch(label_smoothing: f64) -> (Classifier, Vec<EncodedPair>, Vec<(String, Var)>) {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-deberta");
        let config = TransformerConfig {
            max_len: 40,
            label_smoothing,
            ..TransformerConfig::default()
        };
        let classifier = Classifier::load(&fixture, &Device::Cpu, &config).unwrap();
        let pairs: Vec<ResponsePair> = (0..3)
            .map(|i| ResponsePair {
                prompt: format!("Which answer is better, number {i}?"),
                response_a: "a longer answer with some detail ".repeat(i + 1),
                response_b: "no".into(),
            })
            .collect();
        let encoded = classifier.encode(&pairs).unwrap();
        let mut trained: Vec<(String, Var)> = classifier
            .vars
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        trained.sort_by(|a, b| a.0.cmp(&b.0));
        (classifier, encoded, trained)
    }

    /// The training path with dropout off: every weight tracked, nothing checkpointed.
    fn tracked_pass() -> Pass<'static> {
        Pass {
            dropout: None,
            first_trained_layer: 0,
            train_embeddings: true,
            checkpoint: false,
        }
    }

    fn gradients_of(
        classifier: &Classifier,
        views: &[&[Vec<u32>]],
        labels: &[Outcome],
        trained: &[(String, Var)],
    ) -> Vec<Option<Tensor>> {
        let mut grads = vec![None; trained.len()];
        let logits = classifier.forward_views(views, &tracked_pass()).unwrap();
        accumulate_gradients(classifier, &logits, labels, 1.0, trained, &mut grads).unwrap();
        grads
    }

    fn loss_of(classifier: &Classifier, views: &[&[Vec<u32>]]) -> f64 {
        let logits = classifier.forward_views(views, &tracked_pass()).unwrap();
        smoothed_cross_entropy(&logits, &LABELS, classifier.config().label_smoothing)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    }

    /// Backpropagated gradients against central finite differences, for every weight tensor
    /// of the model (its two largest-gradient entries), with label smoothing on. f32
    /// throughout: a step of 1e-2 keeps rounding error (~1e-5) well below the tolerance.
    #[test]
    fn gradients_match_finite_differences_for_every_weight() {
        let (classifier, encoded, trained) = tiny_batch(0.1);
        let views: Vec<&[Vec<u32>]> = encoded.iter().map(|e| e.view(false)).collect();
        let grads = gradients_of(&classifier, &views, &LABELS, &trained);
        let step = 1e-2f32;
        let mut checked = 0;
        for ((name, var), grad) in trained.iter().zip(&grads) {
            let grad = grad
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let values = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
            let original = var.as_tensor().copy().unwrap();
            let weights = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for &index in order.iter().take(2) {
                let loss_at = |delta: f32| {
                    let mut moved = weights.clone();
                    moved[index] += delta;
                    var.set(&Tensor::from_vec(moved, original.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss_of(&classifier, &views)
                };
                let numeric = (loss_at(step) - loss_at(-step)) / (2.0 * step as f64);
                var.set(&original).unwrap();
                let analytic = values[index] as f64;
                let error = (numeric - analytic).abs();
                assert!(
                    error <= 2e-4 + 0.03 * analytic.abs(),
                    "{name}[{index}]: backprop {analytic:.6e}, finite difference {numeric:.6e}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 2 * 32, "{checked} entries checked");
    }

    /// The training path (tracked, custom backward ops) with dropout off computes the same
    /// logits as the inference path.
    #[test]
    fn training_path_without_dropout_equals_the_inference_path() {
        let (classifier, encoded, _) = tiny_batch(0.0);
        let views: Vec<&[Vec<u32>]> = encoded.iter().map(|e| e.view(false)).collect();
        let train = classifier.forward_views(&views, &tracked_pass()).unwrap();
        let infer = classifier.forward_views(&views, &Pass::eval()).unwrap();
        let difference = crate::ops::tests::max_difference(&train, &infer);
        assert!(difference < 1e-5, "logits differ by {difference}");
    }

    /// Micro-batches weighted by their share of the batch add up to the batch's gradients.
    #[test]
    fn accumulated_micro_batches_give_the_whole_batch_gradients() {
        let (classifier, encoded, trained) = tiny_batch(0.1);
        let views: Vec<&[Vec<u32>]> = encoded.iter().map(|e| e.view(false)).collect();
        let whole = gradients_of(&classifier, &views, &LABELS, &trained);
        let mut accumulated = vec![None; trained.len()];
        for (rows, weight) in [(0..2, 2.0 / 3.0), (2..3, 1.0 / 3.0)] {
            let logits = classifier
                .forward_views(&views[rows.clone()], &tracked_pass())
                .unwrap();
            accumulate_gradients(
                &classifier,
                &logits,
                &LABELS[rows],
                weight,
                &trained,
                &mut accumulated,
            )
            .unwrap();
        }
        for (((name, _), a), b) in trained.iter().zip(&whole).zip(&accumulated) {
            let difference =
                crate::ops::tests::max_difference(a.as_ref().unwrap(), b.as_ref().unwrap());
            assert!(difference < 1e-6, "{name}: {difference}");
        }
    }

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
    fn gradient_checkpointing_gives_the_same_gradients() {
        let (classifier, encoded, trained) = tiny_batch(0.0);
        let views: Vec<&[Vec<u32>]> = encoded.iter().map(|e| e.view(false)).collect();
        let labels = LABELS;
        let gradients = |checkpoint: bool| {
            // The same dropout seed: checkpointing must replay the masks exactly.
            let rng = DropoutRng::replay(5, &Device::Cpu).unwrap();
            let pass = Pass {
                dropout: Some(&rng),
                first_trained_layer: 0,
                train_embeddings: true,
                checkpoint,
            };
            let mut grads = vec![None; trained.len()];
            let logits = classifier.forward_views(&views, &pass).unwrap();
            accumulate_gradients(&classifier, &logits, &labels, 1.0, &trained, &mut grads).unwrap();
            grads
        };
        let (stored, recomputed) = (gradients(false), gradients(true));
        let mut layer_weights = 0;
        for (((name, _), a), b) in trained.iter().zip(&stored).zip(&recomputed) {
            let (Some(a), Some(b)) = (a, b) else {
                assert!(
                    a.is_none() && b.is_none(),
                    "{name}: a gradient in one run only"
                );
                continue;
            };
            let difference = crate::ops::tests::max_difference(a, b);
            assert!(
                difference < 1e-5,
                "{name}: gradients differ by {difference}"
            );
            layer_weights += usize::from(name.contains("encoder.layer."));
        }
        // Every weight of both encoder layers got its gradient through the checkpoints.
        assert_eq!(layer_weights, 2 * 16, "{layer_weights}");
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
        let config = TransformerConfig {
            weight_decay: 0.1,
            ..TransformerConfig::default()
        };
        let device = Device::Cpu;
        let weight =
            Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.1, 0.2, -0.3], (3, 2), &device).unwrap();
        let grads = [
            [0.3f32, -0.2, 0.0, 1.5, -0.7, 0.05],
            [-0.1, 0.4, 0.2, -0.6, 0.9, 0.0],
        ];
        let mut optimizer = AdamW::new(&config);
        // Blocks of one row, so that the in-place block updates are exercised.
        optimizer.block_elements = 2;
        for grad in grads {
            // The factor halves a doubled gradient: clipping's path.
            let doubled =
                Tensor::from_vec(grad.map(|g| 2.0 * g).to_vec(), (3, 2), &device).unwrap();
            optimizer
                .step("w.weight", &weight, &doubled, 0.5, 0.01)
                .unwrap();
        }
        let got = weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
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
        let config = TransformerConfig::default();
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
                &trained,
                &gradient(values),
                1.0,
                |_| 0.01,
                Error::Invalid,
            )
        };
        let finite = [0.1, -0.2, 0.3, 0.0];
        assert!(step(finite, &mut optimizer).unwrap());
        let state = |optimizer: &AdamW| {
            let moments = &optimizer.moments["w.weight"];
            (
                bits(weight.as_tensor()),
                bits(&moments.first),
                bits(&moments.second),
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
        let config = TransformerConfig {
            precision: Precision::F16,
            loss_scale: 1024.0,
            ..TransformerConfig::default()
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

    /// The backward pass stops at the lowest trained layer: with the head alone training no
    /// encoder weight gets a gradient, with the top layer only that layer does (with and
    /// without checkpointing).
    #[test]
    fn only_trained_layers_get_gradients() {
        let (classifier, encoded, trained) = tiny_batch(0.0);
        let views: Vec<&[Vec<u32>]> = encoded.iter().map(|e| e.view(false)).collect();
        for (first_trained_layer, checkpoint) in [(2, false), (1, false), (1, true)] {
            let pass = Pass {
                dropout: None,
                first_trained_layer,
                train_embeddings: false,
                checkpoint,
            };
            let mut grads = vec![None; trained.len()];
            let logits = classifier.forward_views(&views, &pass).unwrap();
            accumulate_gradients(&classifier, &logits, &LABELS, 1.0, &trained, &mut grads).unwrap();
            for ((name, _), grad) in trained.iter().zip(&grads) {
                let expected = match Part::of(name) {
                    Part::Head => true,
                    Part::Layer(i) => i >= first_trained_layer,
                    Part::Embeddings => false,
                };
                assert_eq!(
                    grad.is_some(),
                    expected,
                    "{name}, layers from {first_trained_layer} trained, checkpoint {checkpoint}"
                );
            }
        }
    }

    #[test]
    fn a_diverged_fold_names_the_learning_rates_of_its_stage() {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-deberta");
        let config = TransformerConfig {
            max_len: 40,
            learning_rate: 1e30,
            unfreeze: crate::Unfreeze {
                head_only_steps: 3,
                ..Default::default()
            },
            ..TransformerConfig::default()
        };
        let classifier = Classifier::load(&fixture, &Device::Cpu, &config).unwrap();
        let error = |updates, step| {
            diverged(
                0,
                step,
                "the training loss is NaN".into(),
                updates,
                &classifier,
            )
            .to_string()
        };
        assert_eq!(
            error(2, 3),
            "fold 0, step 3: the training loss is NaN; lower learning_rate = 1e30 or \
             head_learning_rate = 1e-4"
        );
        assert_eq!(
            error(2, 2),
            "fold 0, step 2: the training loss is NaN; lower head_learning_rate = 1e-4"
        );
        assert!(error(0, 3).ends_with(
            "before any update: the model as loaded gives it; check the model folder's weights"
        ));
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
        let config = TransformerConfig::default();
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
        let config = TransformerConfig {
            warmup_ratio: 0.1,
            ..TransformerConfig::default()
        };
        assert!((lr_factor(0, 100, &config) - 0.1).abs() < 1e-12);
        assert!((lr_factor(9, 100, &config) - 1.0).abs() < 1e-12);
        assert!((lr_factor(10, 100, &config) - 1.0).abs() < 1e-12);
        assert!(lr_factor(99, 100, &config) < 0.01);
        let linear = TransformerConfig {
            schedule: Schedule::Linear,
            ..config
        };
        assert!((lr_factor(55, 100, &linear) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn stages_select_head_then_top_layers_then_all() {
        let mut config = TransformerConfig::default();
        config.unfreeze.head_only_steps = 2;
        config.unfreeze.top_layers = 1;
        config.unfreeze.top_layers_steps = 3;
        assert_eq!(Stage::at(1, &config, 4), Stage::HeadOnly);
        assert_eq!(Stage::at(2, &config, 4), Stage::TopLayers(1));
        assert_eq!(Stage::at(5, &config, 4), Stage::All);
        let top = Stage::TopLayers(1);
        assert!(top.trains("classifier.weight", 4));
        assert!(top.trains("deberta.encoder.layer.3.output.dense.weight", 4));
        assert!(!top.trains("deberta.encoder.layer.2.output.dense.weight", 4));
        assert!(!top.trains("deberta.embeddings.word_embeddings.weight", 4));
        assert!(!Stage::HeadOnly.trains("deberta.encoder.layer.3.output.dense.weight", 4));
    }

    #[test]
    fn learning_rates_decay_layer_by_layer_below_the_top() {
        let config = TransformerConfig {
            learning_rate: 1e-3,
            head_learning_rate: 5e-3,
            layer_lr_decay: 0.5,
            ..TransformerConfig::default()
        };
        let lr = |name: &str| Part::of(name).learning_rate(&config, 4);
        assert_eq!(lr("classifier.bias"), 5e-3);
        assert_eq!(lr("pooler.dense.weight"), 5e-3);
        assert_eq!(lr("deberta.encoder.layer.3.output.dense.weight"), 1e-3);
        assert_eq!(
            lr("deberta.encoder.layer.2.attention.self.query_proj.bias"),
            5e-4
        );
        assert_eq!(
            lr("deberta.encoder.layer.0.output.LayerNorm.weight"),
            1.25e-4
        );
        assert_eq!(lr("deberta.embeddings.word_embeddings.weight"), 6.25e-5);
        assert_eq!(lr("deberta.encoder.rel_embeddings.weight"), 6.25e-5);
        let flat = TransformerConfig::default();
        assert_eq!(
            Part::of("deberta.embeddings.LayerNorm.bias").learning_rate(&flat, 12),
            flat.learning_rate
        );
    }
}
