//! Helpers for tests of graph ops against composed candle ops, shared by the members' tests,
//! and an allocator that counts what a step allocates.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor, Var};

use crate::EncodedPair;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A row of exactly `len` tokens in both answer orders, ids 3..303 (which every tiny
/// tokenizer and real vocabulary has), varied by `salt`: for measuring a fold's memory on
/// rows of a chosen length.
pub fn synthetic_pair(len: usize, salt: usize) -> EncodedPair {
    let ids = |shift: usize| {
        (0..len)
            .map(|t| (3 + (t * 31 + salt + shift) % 300) as u32)
            .collect()
    };
    EncodedPair {
        as_given: vec![ids(0)],
        swapped: vec![ids(7)],
    }
}

/// The largest difference an op and its composed version may show, in values or gradients.
pub const TOLERANCE: f32 = 1e-5;

/// A CPU variable of `shape` with values uniform in [-1, 1) drawn from `seed`.
pub fn random(shape: &[usize], seed: u64) -> Var {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Σ out·w for a fixed random w: a loss whose gradient reaches every output element.
pub fn weighted_sum(out: &Tensor, seed: u64) -> Tensor {
    let dims = out.dims().to_vec();
    (out * random(&dims, seed).as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
}

/// Values and gradients (for `inputs`) of the op's loss against the composed version's.
pub fn assert_same(op: &Tensor, composed: &Tensor, inputs: &[&Var]) {
    assert!(max_difference(op, composed) < TOLERANCE, "values differ");
    let op_grads = weighted_sum(op, 99).backward().unwrap();
    let composed_grads = weighted_sum(composed, 99).backward().unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let a = op_grads.get(input.as_tensor()).expect("op gradient");
        let b = composed_grads
            .get(input.as_tensor())
            .expect("composed gradient");
        let difference = max_difference(a, b);
        assert!(
            difference < TOLERANCE,
            "input {i}: gradients differ by {difference}"
        );
        assert!(
            max_difference(b, &b.zeros_like().unwrap()) > 1e-3,
            "input {i}: no gradient"
        );
    }
}

/// The system allocator, counting the bytes allocated and not yet freed, and their peak: a
/// test's or bench's `#[global_allocator]`, to measure what a step allocates (what a device
/// must hold, the memory estimates' own measure), as `llm/tests/memory.rs` and
/// `bench_llm_memory` do.
pub struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl CountingAllocator {
    /// Bytes allocated and not freed now.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// Starts a new peak at what is live now, and returns that.
    pub fn reset_peak() -> usize {
        let now = LIVE.load(Ordering::Relaxed);
        PEAK.store(now, Ordering::Relaxed);
        now
    }

    /// The most bytes live at once since the last [`CountingAllocator::reset_peak`].
    pub fn peak() -> usize {
        PEAK.load(Ordering::Relaxed)
    }
}

fn allocated(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only counters are updated
// beside it, and a block is counted only when the system allocator returned one.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            allocated(layout.size());
        }
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let block = unsafe { System.alloc_zeroed(layout) };
        if !block.is_null() {
            allocated(layout.size());
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `block` came from this allocator, that is the system's, with `layout`.
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the new size is the caller's, valid for `realloc`.
        let moved = unsafe { System.realloc(block, layout, size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            allocated(size);
        }
        moved
    }
}
