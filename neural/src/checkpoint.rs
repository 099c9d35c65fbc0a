//! Gradient checkpointing as a candle op: a layer's output becomes one graph node that keeps
//! only the layer's inputs, and its backward pass runs the layer again, tracked, and
//! back-propagates through that. Written here because candle has no checkpointing; shared by
//! the DeBERTa encoder layers and the LLM member's decoder layers.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{CustomOp1, CustomOp2, DType, Tensor, TensorId, Var};

use crate::ops::Precomputed;

type CandleResult<T> = candle_core::Result<T>;

/// Gradients of checkpointed layers' weights, which candle's backward pass cannot return
/// (a custom op has gradients for its inputs only): the recomputing backward pass of each
/// layer adds them here, and the training step collects them beside candle's.
pub type ParamGrads = Arc<Mutex<HashMap<TensorId, Tensor>>>;

/// A layer's call that can be made again with the same result: its weights, its inputs
/// besides the hidden states, and the seed of any dropout masks it draws.
pub trait Recompute: Send + Sync + 'static {
    /// The layer's output for `x` and the optional second input `extra`, recorded for a
    /// backward pass when `grads`.
    fn run(&self, x: &Tensor, extra: Option<&Tensor>, grads: bool) -> CandleResult<Tensor>;
    /// The trained weights whose gradients the recomputing backward pass hands on.
    fn parameters(&self) -> Vec<Tensor>;
}

/// The layer's output as one node whose inputs are `x` and `extra`. The forward pass keeps
/// only those; the backward pass makes the call again, tracked, and back-propagates through
/// it, adding the weights' gradients to `param_grads`.
pub fn checkpointed(
    call: impl Recompute,
    x: &Tensor,
    extra: Option<&Tensor>,
    param_grads: ParamGrads,
) -> CandleResult<Tensor> {
    let value = call.run(&x.detach(), extra.map(|r| r.detach()).as_ref(), false)?;
    // The node joins the graph only through a tracked input. The lowest trained layer's
    // input is detached (nothing below trains), so it enters as a variable of its own,
    // a copy whose gradient is computed and dropped.
    let x = if x.track_op() || extra.is_some_and(Tensor::track_op) {
        x.clone()
    } else {
        Var::from_tensor(x)?.into_inner()
    };
    let op = Checkpoint {
        call,
        param_grads,
        value: Precomputed::new(value)?,
    };
    match extra {
        Some(extra) => x.apply_op2(extra, op),
        None => x.apply_op1(op),
    }
}

struct Checkpoint<C> {
    call: C,
    param_grads: ParamGrads,
    value: Precomputed,
}

impl<C: Recompute> Checkpoint<C> {
    /// Gradients for `x` and `extra`; the layer's weight gradients go to `param_grads`.
    fn backward(
        &self,
        x: &Tensor,
        extra: Option<&Tensor>,
        grad: &Tensor,
    ) -> CandleResult<(Tensor, Option<Tensor>)> {
        let x = Var::from_tensor(&x.detach())?;
        let extra_var = match extra {
            Some(r) if r.track_op() => Some(Var::from_tensor(&r.detach())?),
            _ => None,
        };
        let extra = match &extra_var {
            Some(var) => Some(var.as_tensor().clone()),
            None => extra.map(Tensor::detach),
        };
        let out = self.call.run(x.as_tensor(), extra.as_ref(), true)?;
        // d(Σ out·grad)/dθ is the vector-Jacobian product the outer backward pass asks for.
        let surrogate = (out.to_dtype(DType::F32)? * grad.to_dtype(DType::F32)?)?.sum_all()?;
        let mut grads = surrogate.backward()?;
        let mut store = self
            .param_grads
            .lock()
            .expect("checkpoint grads lock poisoned");
        // Gradients come out of candle's backward pass still recorded as ops on the layer's
        // activations; detached, they keep only their own values.
        for weight in self.call.parameters() {
            if let Some(g) = grads.remove(&weight).map(|g| g.detach()) {
                let sum = match store.remove(&weight.id()) {
                    Some(previous) => (previous + g)?,
                    None => g,
                };
                store.insert(weight.id(), sum);
            }
        }
        let dx = match grads.remove(x.as_tensor()) {
            Some(dx) => dx.detach(),
            None => x.zeros_like()?,
        };
        let dextra = extra_var.and_then(|r| grads.remove(r.as_tensor()).map(|g| g.detach()));
        Ok((dx, dextra))
    }
}

impl<C: Recompute> CustomOp1 for Checkpoint<C> {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }

    crate::precomputed_forward!(storage layout);

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> CandleResult<Option<Tensor>> {
        Ok(Some(self.backward(x, None, grad)?.0))
    }
}

impl<C: Recompute> CustomOp2 for Checkpoint<C> {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }

    crate::precomputed_forward!(s1 l1, s2 l2);

    fn bwd(
        &self,
        x: &Tensor,
        extra: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dextra) = self.backward(x, Some(extra), grad)?;
        Ok((Some(dx), dextra))
    }
}
