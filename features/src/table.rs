//! The computed feature table and its CSR export in either orientation.

use crate::columns::ColumnKind;

/// Which response is presented as A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orientation {
    /// As in the data.
    AsGiven,
    /// Responses exchanged: a_ columns hold B's values, differences are negated.
    Swapped,
}

/// Compressed sparse rows, in the layout LightGBM's `LGBM_DatasetCreateFromCSR` takes.
/// Indices are sorted within each row and explicit zeros are omitted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CsrMatrix {
    pub n_cols: usize,
    pub indptr: Vec<i64>,
    pub indices: Vec<i32>,
    pub values: Vec<f32>,
}

impl CsrMatrix {
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Stacks the rows of all parts, in order.
    ///
    /// # Panics
    /// If the parts do not all have the same number of columns.
    pub fn vstack(parts: &[CsrMatrix]) -> CsrMatrix {
        let n_cols = parts.first().map_or(0, |part| part.n_cols);
        assert!(
            parts.iter().all(|part| part.n_cols == n_cols),
            "CsrMatrix::vstack: parts have different column counts"
        );
        let nnz = parts.iter().map(|part| part.values.len()).sum();
        let mut stacked = CsrMatrix {
            n_cols,
            indptr: Vec::with_capacity(1 + parts.iter().map(CsrMatrix::n_rows).sum::<usize>()),
            indices: Vec::with_capacity(nnz),
            values: Vec::with_capacity(nnz),
        };
        stacked.indptr.push(0);
        for part in parts {
            let offset = stacked.values.len() as i64;
            stacked
                .indptr
                .extend(part.indptr.iter().skip(1).map(|&end| offset + end));
            stacked.indices.extend_from_slice(&part.indices);
            stacked.values.extend_from_slice(&part.values);
        }
        stacked
    }
}

/// Features of every battle, stored once (as given); [`FeatureTable::csr`] derives either
/// orientation. Dense columns come first, then the TF-IDF difference columns.
#[derive(Clone, Debug)]
pub struct FeatureTable {
    pub(crate) kinds: Vec<ColumnKind>,
    pub(crate) n_cols: usize,
    /// Row-major, `kinds.len()` values per row.
    pub(crate) dense: Vec<f32>,
    /// Per-row ranges into `sparse_indices`/`sparse_values` (A − B TF-IDF, absolute columns).
    pub(crate) sparse_indptr: Vec<usize>,
    pub(crate) sparse_indices: Vec<u32>,
    pub(crate) sparse_values: Vec<f32>,
}

impl FeatureTable {
    pub fn n_rows(&self) -> usize {
        self.sparse_indptr.len() - 1
    }

    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    /// CSR rows for the given row indices (in that order) in one orientation.
    ///
    /// # Panics
    /// If a row index is out of range.
    pub fn csr(&self, rows: &[usize], orientation: Orientation) -> CsrMatrix {
        let n_dense = self.kinds.len();
        let sparse_nnz: usize = rows
            .iter()
            .map(|&row| self.sparse_indptr[row + 1] - self.sparse_indptr[row])
            .sum();
        let capacity = sparse_nnz + rows.len() * n_dense;
        let mut csr = CsrMatrix {
            n_cols: self.n_cols,
            indptr: Vec::with_capacity(rows.len() + 1),
            indices: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity),
        };
        csr.indptr.push(0);
        for &row in rows {
            let dense = &self.dense[row * n_dense..(row + 1) * n_dense];
            for (column, kind) in self.kinds.iter().enumerate() {
                let value = match (orientation, kind) {
                    (Orientation::AsGiven, _) | (Orientation::Swapped, ColumnKind::Symmetric) => {
                        dense[column]
                    }
                    (Orientation::Swapped, ColumnKind::Antisymmetric) => -dense[column],
                    (Orientation::Swapped, ColumnKind::SideA) => dense[column + 1],
                    (Orientation::Swapped, ColumnKind::SideB) => dense[column - 1],
                };
                if value != 0.0 {
                    csr.indices.push(column as i32);
                    csr.values.push(value);
                }
            }
            let range = self.sparse_indptr[row]..self.sparse_indptr[row + 1];
            let sign = match orientation {
                Orientation::AsGiven => 1.0,
                Orientation::Swapped => -1.0,
            };
            csr.indices
                .extend(self.sparse_indices[range.clone()].iter().map(|&c| c as i32));
            csr.values
                .extend(self.sparse_values[range].iter().map(|&v| sign * v));
            csr.indptr.push(csr.values.len() as i64);
        }
        csr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(n_cols: usize, rows: &[&[(i32, f32)]]) -> CsrMatrix {
        let mut m = CsrMatrix {
            n_cols,
            indptr: vec![0],
            ..CsrMatrix::default()
        };
        for row in rows {
            for &(index, value) in *row {
                m.indices.push(index);
                m.values.push(value);
            }
            m.indptr.push(m.values.len() as i64);
        }
        m
    }

    #[test]
    fn vstack_concatenates_rows() {
        let top = matrix(3, &[&[(0, 1.0)], &[]]);
        let bottom = matrix(3, &[&[(1, 2.0), (2, 3.0)]]);
        let stacked = CsrMatrix::vstack(&[top, bottom]);
        assert_eq!(
            stacked,
            matrix(3, &[&[(0, 1.0)], &[], &[(1, 2.0), (2, 3.0)]])
        );
        assert_eq!(stacked.n_rows(), 3);
        assert_eq!(CsrMatrix::vstack(&[]).n_rows(), 0);
    }

    #[test]
    #[should_panic(expected = "different column counts")]
    fn vstack_rejects_mismatched_columns() {
        CsrMatrix::vstack(&[matrix(2, &[]), matrix(3, &[])]);
    }

    #[test]
    fn swapped_orientation_permutes_and_negates() {
        let table = FeatureTable {
            kinds: vec![
                ColumnKind::Symmetric,
                ColumnKind::SideA,
                ColumnKind::SideB,
                ColumnKind::Antisymmetric,
            ],
            n_cols: 6,
            dense: vec![5.0, 2.0, 0.0, 2.0],
            sparse_indptr: vec![0, 2],
            sparse_indices: vec![4, 5],
            sparse_values: vec![0.5, -0.25],
        };
        let given = table.csr(&[0], Orientation::AsGiven);
        assert_eq!(
            given,
            matrix(6, &[&[(0, 5.0), (1, 2.0), (3, 2.0), (4, 0.5), (5, -0.25)]])
        );
        let swapped = table.csr(&[0], Orientation::Swapped);
        assert_eq!(
            swapped,
            matrix(6, &[&[(0, 5.0), (2, 2.0), (3, -2.0), (4, -0.5), (5, 0.25)]])
        );
        let twice = table.csr(&[0, 0], Orientation::AsGiven);
        assert_eq!(twice.n_rows(), 2);
        assert_eq!(twice.indptr, [0, 5, 10]);
    }
}
