//! The frozen projections' products on the CPU in f32, written by gemm straight into their
//! output buffer.
//!
//! candle's CPU matmul zeroes its output before gemm overwrites it, and a value built from
//! candle ops is copied once more into the storage a custom op's forward pass returns. A LoRA
//! projection with a bias wrote its output seven times that way (the product's zeroes, the
//! product, the bias added, the update's zeroes, the update, the sum, the copy). Here the bias
//! rows are copied into one buffer and gemm adds both products to it: it writes a buffer it is
//! told not to read, and adds into one it is told to read (`dst := α·dst + β·lhs·rhs`). gemm is the
//! library candle's CPU matmul calls, here called the same way (rayon's pool, candle's thread
//! count) for contiguous f32 operands. Anything else (other dtypes, strided views, CUDA) is
//! `None`, and the caller takes candle's ops.
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};
use gemm::Parallelism;

/// An f32 value computed on the CPU outside candle's ops, in the layout candle gives a
/// contiguous tensor of `shape`: a graph node takes it without a copy
/// ([`Precomputed::from_cpu`](crate::Precomputed::from_cpu)).
pub struct CpuValue {
    pub data: Vec<f32>,
    pub shape: Shape,
}

impl CpuValue {
    /// `data` in the shape of `dims` with its last dimension made `last`.
    pub fn new(data: Vec<f32>, dims: &[usize], last: usize) -> CpuValue {
        let mut dims = dims.to_vec();
        if let Some(d) = dims.last_mut() {
            *d = last;
        }
        CpuValue {
            data,
            shape: dims.into(),
        }
    }

    pub fn into_tensor(self) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.data, self.shape, &candle_core::Device::Cpu)
    }
}

/// A matrix inside an f32 buffer: element (i, j) at `offset + i·row_stride + j·col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// A contiguous f32 CPU tensor as a row-major matrix of `cols` columns (its last dimension),
    /// its leading dimensions flattened into the rows.
    pub(crate) fn of(storage: &'a Storage, layout: &Layout, cols: usize) -> Option<Matrix<'a>> {
        let Storage::Cpu(CpuStorage::F32(data)) = storage else {
            return None;
        };
        if layout.dims().last() != Some(&cols) {
            return None;
        }
        let (start, end) = layout.contiguous_offsets()?;
        let rows = (end - start).checked_div(cols)?;
        (rows * cols == end - start && end <= data.len()).then_some(Matrix {
            data,
            offset: start,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        })
    }

    /// The matrix in the last two dimensions of an f32 CPU tensor of any strides (a weight
    /// stored transposed behind a transposed view, a head of `[b, h, L, d]`), at the leading
    /// indices `at`, one per leading dimension (none for a 2-D tensor).
    pub(crate) fn inner(storage: &'a Storage, layout: &Layout, at: &[usize]) -> Option<Matrix<'a>> {
        let Storage::Cpu(CpuStorage::F32(data)) = storage else {
            return None;
        };
        let (dims, strides) = (layout.dims(), layout.stride());
        let lead = dims.len().checked_sub(2)?;
        if at.len() != lead || at.iter().zip(dims).any(|(i, d)| i >= d) {
            return None;
        }
        let matrix = Matrix {
            data,
            offset: layout.start_offset()
                + at.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>(),
            rows: dims[lead],
            cols: dims[lead + 1],
            row_stride: strides[lead],
            col_stride: strides[lead + 1],
        };
        matrix.in_bounds().then_some(matrix)
    }

    /// A row-major matrix of `cols` columns over all of `data`.
    pub(crate) fn row_major(data: &'a [f32], cols: usize) -> Matrix<'a> {
        Matrix {
            data,
            offset: 0,
            rows: data.len() / cols,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The elements of a row-major matrix, row after row.
    pub(crate) fn values(&self) -> &'a [f32] {
        assert!(self.row_stride == self.cols && self.col_stride == 1);
        &self.data[self.offset..self.offset + self.rows * self.cols]
    }

    /// Rows `start..start + count`.
    pub(crate) fn rows(self, start: usize, count: usize) -> Matrix<'a> {
        assert!(start + count <= self.rows);
        Matrix {
            offset: self.offset + start * self.row_stride,
            rows: count,
            ..self
        }
    }

    pub(crate) fn t(self) -> Matrix<'a> {
        Matrix {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element (i, j) lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst := α·dst + β·lhs·rhs` for a contiguous row-major `dst` of `lhs.rows × rhs.cols`; dst is
/// not read when `read_dst` is false (gemm then takes α = 0 and writes every element). gemm
/// splits the product over candle's threads when `threaded`, and runs on the calling thread
/// otherwise (a caller that runs products in parallel itself).
///
/// # Safety
/// `dst` is valid for writes of `lhs.rows · rhs.cols` f32 values, and for reads of them when
/// `read_dst`; it overlaps neither operand.
unsafe fn gemm_into(
    dst: *mut f32,
    read_dst: bool,
    lhs: Matrix,
    rhs: Matrix,
    beta: f32,
    threaded: bool,
) {
    assert!(lhs.cols == rhs.rows && lhs.in_bounds() && rhs.in_bounds());
    // The thread count candle gives gemm for its own matmuls, read once: candle reads the
    // environment and the CPU list anew at every call.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = match threaded {
        true => *THREADS.get_or_init(candle_core::utils::get_num_threads),
        false => 1,
    };
    let parallelism = match threads {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    // SAFETY: both operands lie inside their buffers (asserted above, so every offset gemm forms
    // from these strides is in bounds), and the caller vouches for dst.
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.cols,
            lhs.cols,
            dst,
            1,
            rhs.cols as isize,
            read_dst,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `dst := β·lhs·rhs` into the uninitialised `dst` (row-major, `lhs.rows × rhs.cols`, which
/// its length must be), and `dst` as the initialised values.
pub(crate) fn write_product<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    lhs: Matrix,
    rhs: Matrix,
    beta: f32,
    threaded: bool,
) -> &'d mut [f32] {
    assert_eq!(dst.len(), lhs.rows * rhs.cols);
    // SAFETY: dst is an exclusive slice of exactly the product's size, so it is valid for its
    // writes and overlaps neither (shared) operand. With read_dst false gemm reads none of it
    // and writes all of it (it sets α to 0, writes zeros when the inner dimension is 0, and its
    // kernels store without loading when α is 0), so afterwards every element is initialised,
    // and MaybeUninit<f32> has f32's layout.
    unsafe {
        gemm_into(dst.as_mut_ptr().cast(), false, lhs, rhs, beta, threaded);
        &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32])
    }
}

/// `lhs·rhs` into a new buffer, which gemm writes without it being zeroed first.
fn product(lhs: Matrix, rhs: Matrix) -> Vec<f32> {
    let len = lhs.rows * rhs.cols;
    let mut dst = Vec::with_capacity(len);
    write_product(&mut dst.spare_capacity_mut()[..len], lhs, rhs, 1.0, true);
    // SAFETY: write_product initialised the first len slots.
    unsafe { dst.set_len(len) };
    dst
}

/// `dst += beta·lhs·rhs`.
pub(crate) fn add_product(dst: &mut [f32], lhs: Matrix, rhs: Matrix, beta: f32, threaded: bool) {
    assert_eq!(dst.len(), lhs.rows * rhs.cols);
    // SAFETY: dst is an initialised exclusive slice of exactly the product's size, so it is
    // valid for reads and writes and overlaps neither (shared) operand.
    unsafe { gemm_into(dst.as_mut_ptr(), true, lhs, rhs, beta, threaded) }
}

/// `x·Wᵀ (+ bias) (+ s·L·R)` for x `[.., in]`, W `[out, in]` (any strides), bias `[out]`, and a
/// LoRA update `(L, R, s)`: `L = drop(x)·Aᵀ` `[.., r]`, `R = Bᵀ` `[r, out]`; `None` where the
/// operands are not f32 CPU tensors of those shapes, x and L contiguous.
pub(crate) fn projection(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    update: Option<(&Tensor, &Tensor, f64)>,
) -> Option<CpuValue> {
    let &[out_dim, in_dim] = weight.dims() else {
        return None;
    };
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let x_matrix = Matrix::of(&x_storage, x_layout, in_dim)?;
    let weight_t = Matrix::inner(&w_storage, w_layout, &[])?.t();
    let mut data = match bias {
        Some(bias) => {
            let (b_storage, b_layout) = bias.storage_and_layout();
            let bias = Matrix::of(&b_storage, b_layout, out_dim)?;
            if bias.rows != 1 {
                return None;
            }
            let mut data = bias.values().repeat(x_matrix.rows);
            add_product(&mut data, x_matrix, weight_t, 1.0, true);
            data
        }
        None => product(x_matrix, weight_t),
    };
    if let Some(update) = update {
        add_update(&mut data, x_matrix.rows, out_dim, update)?;
    }
    Some(CpuValue::new(data, x.dims(), out_dim))
}

/// The projection's input gradient, `dy·W (+ s·L·R)` for dy `[.., out]`, W `[out, in]`, and a
/// LoRA update `(L, R, s)`: `L = dy·B` `[.., r]`, `R = A` `[r, in]`; `None` as for
/// [`projection`].
pub(crate) fn input_gradient(
    grad: &Tensor,
    weight: &Tensor,
    update: Option<(&Tensor, &Tensor, f64)>,
) -> Option<CpuValue> {
    let &[out_dim, in_dim] = weight.dims() else {
        return None;
    };
    let (g_storage, g_layout) = grad.storage_and_layout();
    let (w_storage, w_layout) = weight.storage_and_layout();
    let g = Matrix::of(&g_storage, g_layout, out_dim)?;
    let mut data = product(g, Matrix::inner(&w_storage, w_layout, &[])?);
    if let Some(update) = update {
        add_update(&mut data, g.rows, in_dim, update)?;
    }
    Some(CpuValue::new(data, grad.dims(), in_dim))
}

/// `data += s·L·R` for `data` `[rows, cols]`, L `[rows, r]` contiguous and R `[r, cols]` of any
/// strides; `None` (data untouched) where the shapes do not fit.
fn add_update(
    data: &mut [f32],
    rows: usize,
    cols: usize,
    (left, right, scale): (&Tensor, &Tensor, f64),
) -> Option<()> {
    let (l_storage, l_layout) = left.storage_and_layout();
    let (r_storage, r_layout) = right.storage_and_layout();
    let right = Matrix::inner(&r_storage, r_layout, &[])?;
    let left = Matrix::of(&l_storage, l_layout, right.rows)?;
    if left.rows != rows || right.cols != cols {
        return None;
    }
    add_product(data, left, right, scale as f32, true);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_difference, random};
    use candle_core::{DType, IndexOp};

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        random(shape, seed).as_tensor().detach()
    }

    fn assert_close(value: CpuValue, expected: &Tensor) {
        let value = value.into_tensor().unwrap();
        assert_eq!(value.dims(), expected.dims());
        if value.elem_count() > 0 {
            assert!(max_difference(&value, expected) < 1e-5);
        }
    }

    /// Bias, LoRA update and input gradient against candle's ops, on 3-D inputs, on a view
    /// that starts inside its storage, on zero rows, and with the weight stored transposed.
    #[test]
    fn products_equal_candles_ops() {
        let (stored, bias) = (tensor(&[6, 5], 1), tensor(&[6], 2));
        let transposed = stored.t().unwrap().contiguous().unwrap().t().unwrap();
        let (a, b, scale) = (tensor(&[3, 5], 3), tensor(&[6, 3], 4), 0.75);
        let storage = tensor(&[3, 4, 5], 5);
        let inputs = [
            storage.clone(),
            storage.i(1..).unwrap(),
            storage.i(1..1).unwrap(),
        ];
        for (weight, x) in [&stored, &transposed]
            .into_iter()
            .flat_map(|w| inputs.iter().map(move |x| (w, x)))
        {
            let down = x.broadcast_matmul(&a.t().unwrap()).unwrap();
            let expected = (x.broadcast_matmul(&weight.t().unwrap()).unwrap())
                .broadcast_add(&bias)
                .unwrap();
            assert_close(projection(x, weight, Some(&bias), None).unwrap(), &expected);

            let update = (down.broadcast_matmul(&b.t().unwrap()).unwrap() * scale).unwrap();
            let expected = (x.broadcast_matmul(&weight.t().unwrap()).unwrap() + update).unwrap();
            let b_t = b.t().unwrap();
            let value = projection(x, weight, None, Some((&down, &b_t, scale))).unwrap();
            assert_close(value, &expected);

            let grad = (x.broadcast_matmul(&weight.t().unwrap()).unwrap() * 0.5).unwrap();
            let u = grad.broadcast_matmul(&b).unwrap();
            let expected = (grad.broadcast_matmul(weight).unwrap()
                + (u.broadcast_matmul(&a).unwrap() * scale).unwrap())
            .unwrap();
            let dx = input_gradient(&grad, weight, Some((&u, &a, scale))).unwrap();
            assert_close(dx, &expected);
        }
    }

    /// What gemm is not called on: strided views, other dtypes, mismatched shapes.
    #[test]
    fn other_operands_are_left_to_candle() {
        let (weight, x) = (tensor(&[6, 5], 1), tensor(&[4, 5], 2));
        let strided = tensor(&[5, 4], 3).t().unwrap();
        assert!(projection(&strided, &weight, None, None).is_none());
        let half = x.to_dtype(DType::BF16).unwrap();
        assert!(projection(&half, &weight, None, None).is_none());
        let wrong_width = tensor(&[5, 4], 4);
        assert!(projection(&wrong_width, &weight, None, None).is_none());
        assert!(input_gradient(&x, &weight, None).is_none());
        assert!(projection(&x, &weight, None, None).is_some());
    }
}
