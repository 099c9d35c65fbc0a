//! The DeBERTa classifier as the shared fold loop trains it ([`FoldModel`]): staged
//! unfreezing, layer-wise learning rates, its memory estimate; and the member as the fold-run
//! protocol drives it ([`DebertaRun`]).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, TensorId, Var};
use neural::run::{BaseModel, Member};
use neural::{
    DropoutRng, EncodedPair, FoldModel, FoldRows, MemoryEstimate, ResponsePair, Setting,
    TrainingConfig,
};

use crate::memory::{self, TrainingShape};
use crate::model::{Layout, Pass, HEAD_PREFIXES};
use crate::{Classifier, DebertaConfig};

/// Which parameters a training stage updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    HeadOnly,
    TopLayers(usize),
    All,
}

impl Stage {
    fn at(step: usize, config: &DebertaConfig, layers: usize) -> Stage {
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
    fn learning_rate(self, config: &DebertaConfig, layers: usize) -> f64 {
        let depth = match self {
            Part::Head => return config.training.head_learning_rate,
            Part::Layer(i) => layers.saturating_sub(i + 1),
            Part::Embeddings => layers,
        };
        config.training.learning_rate * config.layer_lr_decay.powi(depth as i32)
    }
}

impl FoldModel for Classifier {
    fn training_config(&self) -> &TrainingConfig {
        &self.config.training
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

    /// Biases and LayerNorm weights are not decayed (the usual BERT recipe).
    fn decays(&self, name: &str) -> bool {
        !(name.ends_with("bias") || name.contains("LayerNorm"))
    }

    fn rates_to_lower(&self, step: usize) -> Vec<Setting> {
        let setting = |key, value| Setting {
            key,
            value,
            source: None,
        };
        let mut settings = Vec::new();
        if Stage::at(step, &self.config, self.model.num_layers()) != Stage::HeadOnly {
            settings.push(setting("learning_rate", self.config.training.learning_rate));
        }
        settings.push(setting(
            "head_learning_rate",
            self.config.training.head_learning_rate,
        ));
        settings
    }

    fn training_logits(
        &self,
        views: &[&[Vec<u32>]],
        step: usize,
        dropout: &DropoutRng,
    ) -> neural::Result<Tensor> {
        let layers = self.model.num_layers();
        let stage = Stage::at(step, &self.config, layers);
        let pass = Pass {
            dropout: Some(dropout),
            first_trained_layer: stage.first_trained_layer(layers),
            train_embeddings: stage == Stage::All,
            checkpoint: self.config.training.gradient_checkpointing,
        };
        Ok(self.forward_views(views, &pass)?)
    }

    fn take_checkpoint_grads(&self) -> HashMap<TensorId, Tensor> {
        self.model.take_checkpoint_grads()
    }

    fn prediction_logits(&self, views: &[&[Vec<u32>]]) -> neural::Result<Tensor> {
        Ok(self.forward_views(views, &Pass::eval())?)
    }

    /// Every weight: staged unfreezing trains all of them by the end.
    fn snapshot(&self) -> neural::Result<HashMap<String, Tensor>> {
        Ok(Classifier::snapshot(self)?)
    }

    fn restore(&self, snapshot: &HashMap<String, Tensor>) -> neural::Result<()> {
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
    let training = &config.training;
    let model = classifier.model.config();
    let layers = classifier.model.num_layers();
    let steps = rows
        .train
        .div_ceil(training.batch_size * training.grad_accumulation)
        * training.epochs;
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
        sequences: training.batch_size.min(rows.train) * views,
        eval_sequences: 2 * rows.prediction_rows(training) * views,
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
        precision: training.precision,
        checkpoint: training.gradient_checkpointing,
        accumulation: training.grad_accumulation,
    })
}

/// The weight whose gradient candle builds as a whole table (see [`TrainingShape`]).
const WORD_EMBEDDINGS: &str = "deberta.embeddings.word_embeddings.weight";

/// The DeBERTa member under the fold-run protocol: every weight trains, so each fold reads
/// the model folder afresh; with `save_models` a fold keeps its fine-tuned model in
/// `fold-K/model/`, which `--predict-only` reads back.
pub struct DebertaRun {
    /// The model folder (`--model`): needed to train.
    model_dir: Option<PathBuf>,
    device: Device,
    config: DebertaConfig,
    save_models: bool,
    /// The model folder's path and fingerprint, once read for training.
    base: Option<BaseModel>,
}

impl DebertaRun {
    pub fn new(
        model_dir: Option<PathBuf>,
        device: Device,
        config: DebertaConfig,
        save_models: bool,
    ) -> DebertaRun {
        DebertaRun {
            model_dir,
            device,
            config,
            save_models,
            base: None,
        }
    }
}

impl Member for DebertaRun {
    type Config = DebertaConfig;
    type Model = Classifier;

    fn config(&self) -> &DebertaConfig {
        &self.config
    }

    fn encode(model: &Classifier, pairs: &[ResponsePair]) -> neural::Result<Vec<EncodedPair>> {
        Ok(model.encode(pairs)?)
    }

    fn for_training(&mut self, _fold: usize) -> neural::Result<Classifier> {
        let dir = self
            .model_dir
            .as_deref()
            .ok_or_else(|| neural::Error::Invalid("--model is needed to train".into()))?;
        let classifier = Classifier::load(dir, &self.device, &self.config)?;
        if self.base.is_none() {
            let fingerprint = crate::base_fingerprint(dir)?;
            self.base = Some(BaseModel {
                dir: dir.to_owned(),
                fingerprint,
            });
        }
        Ok(classifier)
    }

    fn saved(&self, fold_dir: &Path) -> (PathBuf, &'static str) {
        (fold_dir.join("model"), "train with --save-models first")
    }

    fn for_prediction(
        &mut self,
        _fold: usize,
        saved: &Path,
        _recorded: Option<&BaseModel>,
    ) -> neural::Result<Classifier> {
        Ok(Classifier::load(saved, &self.device, &self.config)?)
    }

    fn save(&self, model: &Classifier, fold_dir: &Path) -> neural::Result<()> {
        if self.save_models {
            model.save_pretrained(&self.saved(fold_dir).0)?;
        }
        Ok(())
    }

    fn base(&self) -> Option<&BaseModel> {
        self.base.as_ref()
    }

    fn give_back(&mut self, _model: Classifier) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Unfreeze;
    use ensemble_core::Outcome;
    use neural::testing::max_difference;
    use neural::{accumulate_gradients, diverged, smoothed_cross_entropy};

    const LABELS: [Outcome; 3] = [Outcome::A, Outcome::B, Outcome::Tie];

    /// The tiny fixture model, three encoded battles, and every weight by name.
    fn tiny_batch(label_smoothing: f64) -> (Classifier, Vec<EncodedPair>, Vec<(String, Var)>) {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-deberta");
        let config = DebertaConfig {
            training: TrainingConfig {
                max_len: 40,
                label_smoothing,
                ..TrainingConfig::default()
            },
            ..DebertaConfig::default()
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
        smoothed_cross_entropy(
            &logits,
            &LABELS,
            classifier.config().training.label_smoothing,
        )
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
        let difference = max_difference(&train, &infer);
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
            let difference = max_difference(a.as_ref().unwrap(), b.as_ref().unwrap());
            assert!(difference < 1e-6, "{name}: {difference}");
        }
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
            let difference = max_difference(a, b);
            assert!(
                difference < 1e-5,
                "{name}: gradients differ by {difference}"
            );
            layer_weights += usize::from(name.contains("encoder.layer."));
        }
        // Every weight of both encoder layers got its gradient through the checkpoints.
        assert_eq!(layer_weights, 2 * 16, "{layer_weights}");
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
        let config = DebertaConfig {
            training: TrainingConfig {
                max_len: 40,
                learning_rate: 1e30,
                ..TrainingConfig::default()
            },
            unfreeze: Unfreeze {
                head_only_steps: 3,
                ..Default::default()
            },
            ..DebertaConfig::default()
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
    fn stages_select_head_then_top_layers_then_all() {
        let mut config = DebertaConfig::default();
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
        let config = DebertaConfig {
            training: TrainingConfig {
                learning_rate: 1e-3,
                head_learning_rate: 5e-3,
                ..TrainingConfig::default()
            },
            layer_lr_decay: 0.5,
            ..DebertaConfig::default()
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
        let flat = DebertaConfig::default();
        assert_eq!(
            Part::of("deberta.embeddings.LayerNorm.bias").learning_rate(&flat, 12),
            flat.training.learning_rate
        );
    }
}
