//! A small safe layer over LightGBM's C API (lightgbm3-sys's bindings, through
//! `lightgbm-capi`). The `lightgbm3` crate's safe API keeps its handles private and has no CSR
//! input or dataset subsets, both of which the CV needs: the sparse TF-IDF part goes in
//! without densifying, and the binned dataset is built once and subset per fold instead of
//! re-binned ten times.
use crate::{Error, Result};
use lightgbm_capi as sys;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CStr, CString};
use std::sync::{Mutex, MutexGuard, PoisonError};

const DTYPE_FLOAT32: i32 = 0;
const DTYPE_INT64: i32 = 3;
const PREDICT_NORMAL: i32 = 0;
const IMPORTANCE_SPLIT: i32 = 0;
const IMPORTANCE_GAIN: i32 = 1;

fn check(code: i32) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: LightGBM returns a pointer to a thread-local, NUL-terminated message.
    let message = unsafe { CStr::from_ptr(sys::LGBM_GetLastError()) };
    Err(Error::LightGbm(clean_message(&message.to_string_lossy())))
}

/// LightGBM's message without the C++ source location it appends to failed checks
/// ("... at /path/of/the/build/src/io/config_auto.cpp, line 371 ."), which means nothing to
/// a user.
fn clean_message(message: &str) -> String {
    let message = message.trim();
    let message = match message.rfind(" at ") {
        Some(at) if message[at..].contains(", line ") => &message[..at],
        _ => message,
    };
    message.trim_end_matches([' ', '.']).to_owned()
}

/// LightGBM keeps its thread count in one process-wide variable, which every call given
/// parameters sets (to `num_threads`, or to all cores when that is unset). A booster sizes its
/// per-thread buffers from it when created and reads it again at every round, so two LightGBM
/// jobs on different threads could run a round with more threads than the buffers hold: the
/// lib tests crashed so (SIGSEGV) in CI. Every call given parameters therefore holds this
/// lock, and a booster being trained holds it for its whole life.
static LIGHTGBM: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    // The lock guards no data, so a thread that panicked holding it left nothing half-done.
    LIGHTGBM.lock().unwrap_or_else(PoisonError::into_inner)
}

fn c_string(text: &str) -> Result<CString> {
    CString::new(text).map_err(|_| Error::Invalid(format!("NUL byte in LightGBM text {text:?}")))
}

/// Rows of a sparse matrix in CSR form, borrowed. Column indices are sorted within a row.
#[derive(Clone, Copy, Debug)]
pub struct CsrView<'a> {
    pub indptr: &'a [i64],
    pub indices: &'a [i32],
    pub values: &'a [f32],
    pub n_cols: usize,
}

impl CsrView<'_> {
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    fn validate(&self) -> Result<()> {
        let nnz = self.indices.len();
        let ok = !self.indptr.is_empty()
            && self.indptr[0] == 0
            && *self.indptr.last().unwrap() as usize == nnz
            && self.values.len() == nnz
            && self.indptr.windows(2).all(|w| w[0] <= w[1])
            && self
                .indices
                .iter()
                .all(|&c| c >= 0 && (c as usize) < self.n_cols);
        ok.then_some(())
            .ok_or_else(|| Error::Invalid("malformed CSR matrix".into()))
    }

    /// The given rows, in that order, as an owned matrix.
    pub fn select_rows(&self, rows: &[usize]) -> CsrOwned {
        let mut out = CsrOwned {
            indptr: Vec::with_capacity(rows.len() + 1),
            indices: Vec::new(),
            values: Vec::new(),
            n_cols: self.n_cols,
        };
        out.indptr.push(0);
        for &row in rows {
            let (start, end) = (self.indptr[row] as usize, self.indptr[row + 1] as usize);
            out.indices.extend_from_slice(&self.indices[start..end]);
            out.values.extend_from_slice(&self.values[start..end]);
            out.indptr.push(out.indices.len() as i64);
        }
        out
    }
}

/// An owned CSR matrix (see [`CsrView`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CsrOwned {
    pub indptr: Vec<i64>,
    pub indices: Vec<i32>,
    pub values: Vec<f32>,
    pub n_cols: usize,
}

impl CsrOwned {
    pub fn view(&self) -> CsrView<'_> {
        CsrView {
            indptr: &self.indptr,
            indices: &self.indices,
            values: &self.values,
            n_cols: self.n_cols,
        }
    }
}

/// A binned LightGBM dataset with labels.
pub struct Dataset {
    handle: sys::DatasetHandle,
    n_rows: usize,
}

// SAFETY: a LightGBM dataset is not tied to the thread that built it.
unsafe impl Send for Dataset {}

impl Dataset {
    /// Bins `csr` (LightGBM's dataset parameters, e.g. `max_bin=255`) and attaches the labels.
    pub fn from_csr(csr: CsrView<'_>, labels: &[f32], params: &str) -> Result<Dataset> {
        csr.validate()?;
        if labels.len() != csr.n_rows() {
            return Err(Error::Invalid(format!(
                "{} labels for {} rows",
                labels.len(),
                csr.n_rows()
            )));
        }
        let params = c_string(params)?;
        let mut handle = std::ptr::null_mut();
        let _exclusive = exclusive();
        // SAFETY: the slices outlive the call and their lengths are passed alongside.
        check(unsafe {
            sys::LGBM_DatasetCreateFromCSR(
                csr.indptr.as_ptr() as *const c_void,
                DTYPE_INT64,
                csr.indices.as_ptr(),
                csr.values.as_ptr() as *const c_void,
                DTYPE_FLOAT32,
                csr.indptr.len() as i64,
                csr.indices.len() as i64,
                csr.n_cols as i64,
                params.as_ptr(),
                std::ptr::null_mut(),
                &mut handle,
            )
        })?;
        let dataset = Dataset {
            handle,
            n_rows: csr.n_rows(),
        };
        let field = c_string("label")?;
        // SAFETY: `labels` has one f32 per row, as checked above.
        check(unsafe {
            sys::LGBM_DatasetSetField(
                dataset.handle,
                field.as_ptr(),
                labels.as_ptr() as *const c_void,
                labels.len() as i32,
                DTYPE_FLOAT32,
            )
        })?;
        Ok(dataset)
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// The given rows (ascending) with their labels, sharing this dataset's bins, so that
    /// subsets of one dataset can serve as training and validation data of one booster.
    pub fn subset(&self, rows: &[usize], params: &str) -> Result<Dataset> {
        if rows.windows(2).any(|w| w[0] >= w[1]) || rows.last().is_some_and(|&r| r >= self.n_rows) {
            return Err(Error::Invalid(
                "subset rows must ascend within the dataset".into(),
            ));
        }
        let rows: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let params = c_string(params)?;
        let mut handle = std::ptr::null_mut();
        let _exclusive = exclusive();
        // SAFETY: `rows` outlives the call; LightGBM copies the rows it needs.
        check(unsafe {
            sys::LGBM_DatasetGetSubset(
                self.handle,
                rows.as_ptr(),
                rows.len() as i32,
                params.as_ptr(),
                &mut handle,
            )
        })?;
        Ok(Dataset {
            handle,
            n_rows: rows.len(),
        })
    }
}

impl Drop for Dataset {
    fn drop(&mut self) {
        // SAFETY: the handle came from LightGBM and is freed once.
        unsafe { sys::LGBM_DatasetFree(self.handle) };
    }
}

/// Every LightGBM parameter name and alias, mapped to the parameter it sets, from LightGBM's
/// own `LGBM_DumpParamAliases` (`{"name": ["alias", …], …}`).
pub fn parameter_names() -> Result<HashMap<String, String>> {
    let text = fetch_text(1 << 16, |size, len, out| {
        // SAFETY: `out` points to `size` writable bytes (`fetch_text`'s buffer), and LightGBM
        // writes at most `size` of them.
        check(unsafe { sys::LGBM_DumpParamAliases(size, len, out) })
    })?;
    let aliases: BTreeMap<String, Vec<String>> = serde_json::from_slice(&text)
        .map_err(|e| Error::LightGbm(format!("cannot read LightGBM's parameter list: {e}")))?;
    Ok(aliases
        .into_iter()
        .flat_map(|(name, aliases)| {
            let names = std::iter::once(name.clone()).chain(aliases);
            names.map(move |alias| (alias, name.clone()))
        })
        .collect())
}

/// Text that a LightGBM call writes into the caller's buffer. `call(size, len, out)` writes at
/// most `size` bytes to `out` and the length it needs, NUL included, to `len`; a longer text
/// is fetched again into a buffer of that length. Returned without its NUL.
fn fetch_text(
    initial_size: usize,
    mut call: impl FnMut(i64, &mut i64, *mut std::os::raw::c_char) -> Result<()>,
) -> Result<Vec<u8>> {
    let mut len = 0i64;
    let mut buffer = vec![0u8; initial_size];
    for _ in 0..2 {
        call(buffer.len() as i64, &mut len, buffer.as_mut_ptr().cast())?;
        if (len as usize) <= buffer.len() {
            break;
        }
        buffer.resize(len as usize, 0);
    }
    buffer.truncate((len as usize).saturating_sub(1));
    Ok(buffer)
}

/// A booster being trained; it borrows its datasets, which LightGBM reads at every round, and
/// holds LightGBM's lock ([`LIGHTGBM`]) until it is freed.
struct TrainingBooster<'d> {
    handle: sys::BoosterHandle,
    _data: std::marker::PhantomData<&'d Dataset>,
    _exclusive: MutexGuard<'static, ()>,
}

impl<'d> TrainingBooster<'d> {
    fn new(train: &'d Dataset, valid: Option<&'d Dataset>, params: &str) -> Result<Self> {
        let params = c_string(params)?;
        let mut handle = std::ptr::null_mut();
        let exclusive = exclusive();
        // SAFETY: both datasets outlive the booster (lifetime 'd).
        check(unsafe { sys::LGBM_BoosterCreate(train.handle, params.as_ptr(), &mut handle) })?;
        let booster = TrainingBooster {
            handle,
            _data: std::marker::PhantomData,
            _exclusive: exclusive,
        };
        if let Some(valid) = valid {
            // SAFETY: both handles are live LightGBM objects; `valid` outlives the booster
            // ('d). Should this fail, `booster` is already built and its Drop frees the handle.
            check(unsafe { sys::LGBM_BoosterAddValidData(booster.handle, valid.handle) })?;
        }
        Ok(booster)
    }

    /// One boosting round; false when no tree could be grown.
    fn update(&mut self) -> Result<bool> {
        let mut finished = 0;
        // SAFETY: a live booster handle and a valid out-pointer for the flag.
        check(unsafe { sys::LGBM_BoosterUpdateOneIter(self.handle, &mut finished) })?;
        Ok(finished == 0)
    }

    /// The first metric on the validation data after the last round.
    fn valid_metric(&self) -> Result<f64> {
        let mut count = 0;
        // SAFETY: a live booster handle and a valid out-pointer for the count.
        check(unsafe { sys::LGBM_BoosterGetEvalCounts(self.handle, &mut count) })?;
        let mut results = vec![0.0; count.max(1) as usize];
        let mut len = 0;
        // SAFETY: `results` is sized from LightGBM's own count of metrics, which is what it
        // writes for one data set.
        check(unsafe { sys::LGBM_BoosterGetEval(self.handle, 1, &mut len, results.as_mut_ptr()) })?;
        results
            .first()
            .copied()
            .filter(|_| len > 0)
            .ok_or_else(|| Error::LightGbm("no validation metric was computed".into()))
    }

    fn model_string(&self, num_iterations: usize) -> Result<String> {
        let text = fetch_text(1 << 20, |size, len, out| {
            // SAFETY: `out` points to `size` writable bytes (`fetch_text`'s buffer), and
            // LightGBM writes at most `size` of them.
            check(unsafe {
                sys::LGBM_BoosterSaveModelToString(
                    self.handle,
                    0,
                    num_iterations as i32,
                    IMPORTANCE_GAIN,
                    size,
                    len,
                    out,
                )
            })
        })?;
        String::from_utf8(text).map_err(|_| Error::LightGbm("model text is not UTF-8".into()))
    }
}

impl Drop for TrainingBooster<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from LGBM_BoosterCreate and is freed once, here (before the
        // lock is released with the fields).
        unsafe { sys::LGBM_BoosterFree(self.handle) };
    }
}

/// How long to boost and when to stop.
#[derive(Clone, Copy, Debug)]
pub struct Rounds {
    pub max: usize,
    /// Stop after this many rounds without a better validation metric.
    pub early_stopping: usize,
}

/// The result of training: the model cut at its best round.
pub struct Trained {
    pub model: Model,
    pub best_iteration: usize,
    pub best_valid_metric: f64,
}

/// Trains on `train`, early-stopping on `valid` (lower metric is better). `on_round` sees
/// each round's number and validation metric; it runs under LightGBM's lock, so it must not
/// call LightGBM itself.
pub fn train(
    train: &Dataset,
    valid: &Dataset,
    params: &str,
    rounds: Rounds,
    mut on_round: impl FnMut(usize, f64),
) -> Result<Trained> {
    let mut booster = TrainingBooster::new(train, Some(valid), params)?;
    let (mut best_iteration, mut best_metric) = (0, f64::INFINITY);
    for round in 1..=rounds.max {
        // A round that can grow no tree ends training. LightGBM keeps the first round's
        // constant trees (the class prior) but rolls back later empty ones.
        let grew = booster.update()?;
        if !grew && round > 1 {
            break;
        }
        let metric = booster.valid_metric()?;
        on_round(round, metric);
        if metric < best_metric {
            (best_iteration, best_metric) = (round, metric);
        } else if round - best_iteration >= rounds.early_stopping {
            break;
        }
        if !grew {
            break;
        }
    }
    if best_iteration == 0 {
        return Err(Error::LightGbm(
            "no boosting round improved on nothing".into(),
        ));
    }
    let text = booster.model_string(best_iteration)?;
    drop(booster);
    let model = Model::from_string(&text)?;
    Ok(Trained {
        model,
        best_iteration,
        best_valid_metric: best_metric,
    })
}

/// Trains on `train` for exactly `rounds` rounds (fewer only if no tree can be grown), with no
/// validation data: a refit whose round count was chosen elsewhere.
pub fn train_rounds(train: &Dataset, params: &str, rounds: usize) -> Result<Model> {
    let mut booster = TrainingBooster::new(train, None, params)?;
    let mut trained = 0;
    while trained < rounds {
        let grew = booster.update()?;
        // LightGBM keeps the first round's constant trees but rolls back later empty ones.
        if grew || trained == 0 {
            trained += 1;
        }
        if !grew {
            break;
        }
    }
    let text = booster.model_string(trained)?;
    drop(booster);
    Model::from_string(&text)
}

/// A trained model, independent of the data it was trained on.
pub struct Model {
    handle: sys::BoosterHandle,
    n_classes: usize,
    text: String,
}

// SAFETY: a booster is heap state owned by this value, with no tie to the thread that made
// it, so it may move between threads. It is deliberately not `Sync`: every prediction builds
// a `Predictor` whose `GBDT::InitPredict` writes fields of the shared booster, so two threads
// must not predict with one `Model` at once.
unsafe impl Send for Model {}

impl Model {
    pub fn from_string(text: &str) -> Result<Model> {
        let c_text = c_string(text)?;
        let (mut handle, mut iterations) = (std::ptr::null_mut(), 0);
        let exclusive = exclusive();
        // SAFETY: a NUL-terminated model text and valid out-pointers.
        check(unsafe {
            sys::LGBM_BoosterLoadModelFromString(c_text.as_ptr(), &mut iterations, &mut handle)
        })?;
        drop(exclusive);
        // Owned (and freed on drop) before anything else can fail.
        let mut model = Model {
            handle,
            n_classes: 0,
            text: text.to_owned(),
        };
        let mut n_classes = 0;
        // SAFETY: a live booster handle and a valid out-pointer.
        check(unsafe { sys::LGBM_BoosterGetNumClasses(model.handle, &mut n_classes) })?;
        model.n_classes = usize::try_from(n_classes)
            .map_err(|_| Error::LightGbm(format!("the model reports {n_classes} classes")))?;
        Ok(model)
    }

    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// LightGBM's text format of the model.
    pub fn as_text(&self) -> &str {
        &self.text
    }

    /// Class probabilities, `n_classes` per row.
    pub fn predict(&self, csr: CsrView<'_>, params: &str) -> Result<Vec<f64>> {
        csr.validate()?;
        let params = c_string(params)?;
        let mut out = vec![0.0; csr.n_rows() * self.n_classes];
        let mut len = 0i64;
        if csr.n_rows() == 0 {
            return Ok(out);
        }
        let _exclusive = exclusive();
        // SAFETY: `out` has room for n_rows × n_classes results, which is what LightGBM writes.
        check(unsafe {
            sys::LGBM_BoosterPredictForCSR(
                self.handle,
                csr.indptr.as_ptr() as *const c_void,
                DTYPE_INT64,
                csr.indices.as_ptr(),
                csr.values.as_ptr() as *const c_void,
                DTYPE_FLOAT32,
                csr.indptr.len() as i64,
                csr.indices.len() as i64,
                csr.n_cols as i64,
                PREDICT_NORMAL,
                0,
                -1,
                params.as_ptr(),
                &mut len,
                out.as_mut_ptr(),
            )
        })?;
        debug_assert_eq!(len as usize, out.len());
        Ok(out)
    }

    /// The number of features the model was trained on, as LightGBM counts them.
    pub fn n_features(&self) -> Result<usize> {
        let mut n = 0;
        // SAFETY: a live booster handle and a valid out-pointer.
        check(unsafe { sys::LGBM_BoosterGetNumFeature(self.handle, &mut n) })?;
        usize::try_from(n).map_err(|_| Error::LightGbm(format!("the model reports {n} features")))
    }

    /// Total gain and number of splits per feature, one value per model feature.
    pub fn importance(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        // Sized from LightGBM's own count: it writes one value per feature of the model.
        let n_features = self.n_features()?;
        let mut gain = vec![0.0; n_features];
        let mut split = vec![0.0; n_features];
        // SAFETY: `gain` holds one f64 per model feature, which is what LightGBM writes.
        check(unsafe {
            sys::LGBM_BoosterFeatureImportance(self.handle, 0, IMPORTANCE_GAIN, gain.as_mut_ptr())
        })?;
        // SAFETY: as above, for `split`.
        check(unsafe {
            sys::LGBM_BoosterFeatureImportance(self.handle, 0, IMPORTANCE_SPLIT, split.as_mut_ptr())
        })?;
        Ok((gain, split))
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: the handle came from LGBM_BoosterLoadModelFromString and is freed once, here.
        unsafe { sys::LGBM_BoosterFree(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// `rows` dense rows of `n_cols` features, row i of class i % 3, feature j of it
    /// `value(i, class, j)`; the labels.
    fn dense(
        rows: usize,
        n_cols: usize,
        value: impl Fn(usize, usize, usize) -> f32,
    ) -> (CsrOwned, Vec<f32>) {
        let mut csr = CsrOwned {
            indptr: vec![0],
            n_cols,
            ..Default::default()
        };
        let mut labels = Vec::new();
        for i in 0..rows {
            let class = i % 3;
            csr.indices.extend(0..n_cols as i32);
            csr.values.extend((0..n_cols).map(|j| value(i, class, j)));
            csr.indptr.push(csr.indices.len() as i64);
            labels.push(class as f32);
        }
        (csr, labels)
    }

    /// Three separable classes on one informative feature and one noise feature.
    fn toy() -> (CsrOwned, Vec<f32>) {
        dense(300, 2, |i, class, j| match j {
            0 => class as f32 * 10.0 + (i % 7) as f32,
            _ => ((i * 37) % 11) as f32,
        })
    }

    /// 2,000 rows of 40 features, some informative: enough work for LightGBM's threads.
    fn wide() -> (CsrOwned, Vec<f32>) {
        dense(2000, 40, |i, class, j| {
            let noise = ((i * 7919 + j * 104_729) % 1000) as f32 / 100.0;
            match j % 8 {
                0 => class as f32 + noise,
                _ => noise,
            }
        })
    }

    /// The first 1,600 rows of a 2,000-row dataset for training and the other 400 for early
    /// stopping, on one thread.
    fn first_1600_and_the_rest(full: &Dataset) -> (Dataset, Dataset) {
        let subset = |rows: std::ops::Range<usize>| {
            full.subset(&rows.collect::<Vec<_>>(), "num_threads=1")
                .unwrap()
        };
        (subset(0..1600), subset(1600..2000))
    }

    const PARAMS: &str = "objective=multiclass num_class=3 metric=multi_logloss verbosity=-1 \
        num_threads=1 min_data_in_leaf=5 learning_rate=0.3 seed=1 deterministic=true";

    #[test]
    fn trains_on_subsets_and_predicts_from_csr() {
        let (csr, labels) = toy();
        let full = Dataset::from_csr(csr.view(), &labels, "verbosity=-1 max_bin=63").unwrap();
        let train_rows: Vec<usize> = (0..300).filter(|i| i % 5 != 0).collect();
        let valid_rows: Vec<usize> = (0..300).filter(|i| i % 5 == 0).collect();
        let train_set = full.subset(&train_rows, "").unwrap();
        let valid_set = full.subset(&valid_rows, "").unwrap();
        assert_eq!((train_set.n_rows(), valid_set.n_rows()), (240, 60));
        let mut seen = Vec::new();
        let trained = train(
            &train_set,
            &valid_set,
            PARAMS,
            Rounds {
                max: 50,
                early_stopping: 5,
            },
            |round, metric| seen.push((round, metric)),
        )
        .unwrap();
        assert!(
            trained.best_valid_metric < 0.1,
            "{}",
            trained.best_valid_metric
        );
        assert_eq!(
            seen[trained.best_iteration - 1].1,
            trained.best_valid_metric
        );
        let probs = trained
            .model
            .predict(csr.view().select_rows(&valid_rows).view(), "")
            .unwrap();
        assert_eq!(probs.len(), 60 * 3);
        for (k, &row) in valid_rows.iter().enumerate() {
            let p = &probs[3 * k..3 * k + 3];
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(p[row % 3] > 0.8, "row {row}: {p:?}");
        }
        // One value per model feature, as LightGBM counts them (the buffers are sized from it).
        let (gain, split) = trained.model.importance().unwrap();
        assert_eq!(trained.model.n_features().unwrap(), 2);
        assert_eq!((gain.len(), split.len()), (2, 2));
        assert!(gain[0] > gain[1] && split[0] > 0.0);
        let names = parameter_names().unwrap();
        for (name, canonical) in [
            ("lambda_l1", "lambda_l1"),
            ("reg_alpha", "lambda_l1"),
            ("min_gain_to_split", "min_gain_to_split"),
            ("metrics", "metric"),
        ] {
            assert_eq!(names.get(name).map(String::as_str), Some(canonical));
        }
        assert_eq!(names.get("lambda_l3"), None);
        let reloaded = Model::from_string(trained.model.as_text()).unwrap();
        assert_eq!(
            reloaded.predict(csr.view(), "").unwrap(),
            trained.model.predict(csr.view(), "").unwrap()
        );
    }

    #[test]
    fn data_too_small_to_split_gives_the_class_prior() {
        let (csr, labels) = toy();
        let full = Dataset::from_csr(csr.view(), &labels, "verbosity=-1").unwrap();
        let train_set = full.subset(&(0..30).collect::<Vec<_>>(), "").unwrap();
        let valid_set = full.subset(&(30..60).collect::<Vec<_>>(), "").unwrap();
        let params = PARAMS.replace("min_data_in_leaf=5", "min_data_in_leaf=100");
        let rounds = Rounds {
            max: 20,
            early_stopping: 5,
        };
        let trained = train(&train_set, &valid_set, &params, rounds, |_, _| {}).unwrap();
        assert_eq!(trained.best_iteration, 1);
        let p = trained
            .model
            .predict(csr.view().select_rows(&[0]).view(), "")
            .unwrap();
        for k in 0..3 {
            assert!((p[k] - 1.0 / 3.0).abs() < 1e-6, "{p:?}");
        }
    }

    #[test]
    fn messages_lose_the_cpp_source_location() {
        assert_eq!(
            clean_message(
                "Check failed: (num_leaves) > (1) at /x/out/lightgbm/src/io/config_auto.cpp, \
                 line 352 .\n"
            ),
            "Check failed: (num_leaves) > (1)"
        );
        assert_eq!(
            clean_message("Parameter max_depth should be of type int, got \"abc\""),
            "Parameter max_depth should be of type int, got \"abc\""
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_crash() {
        let (csr, labels) = toy();
        assert!(Dataset::from_csr(csr.view(), &labels[1..], "").is_err());
        let bad = CsrView {
            n_cols: 1,
            ..csr.view()
        };
        assert!(Dataset::from_csr(bad, &labels, "").is_err());
        let full = Dataset::from_csr(csr.view(), &labels, "verbosity=-1").unwrap();
        assert!(full.subset(&[3, 1], "").is_err());
        assert!(full.subset(&[299, 300], "").is_err());
    }

    /// Row-wise and column-wise histograms grow the same trees under a column and row sample
    /// on mostly-zero columns (as the TF-IDF ones), which LightGBM keeps in a multi-value bin
    /// row-wise: `BoosterParams` forces column-wise for speed alone. The columns' non-zeros
    /// overlap (the XOR mixes row and column), so that bundling cannot merge them into dense
    /// features: LightGBM's debug log then shows `GetMultiBinFromSparseFeatures` at a sparse
    /// rate of 0.90 (0.00, bundled, with non-zeros at `(31 i + 17 j) % 10 == 0`).
    #[test]
    fn row_and_column_wise_histograms_grow_the_same_trees() {
        let (csr, labels) = dense(2000, 60, |i, class, j| {
            let present = ((i * 7919) ^ (j * 104_729)) % 10 == 0;
            let signal = if j % 6 == class { 2.0 } else { 1.0 };
            if present {
                signal + ((i * 7 + j) % 5) as f32 / 10.0
            } else {
                0.0
            }
        });
        let full = Dataset::from_csr(csr.view(), &labels, "verbosity=-1 num_threads=1").unwrap();
        let (train_set, valid_set) = first_1600_and_the_rest(&full);
        let rounds = Rounds {
            max: 30,
            early_stopping: 30,
        };
        let predict = |layout: &str| {
            let params = format!(
                "{PARAMS} feature_fraction=0.5 bagging_fraction=0.5 bagging_freq=1 {layout}"
            );
            let trained = train(&train_set, &valid_set, &params, rounds, |_, _| {}).unwrap();
            (
                trained.best_iteration,
                trained.model.predict(csr.view(), "num_threads=1").unwrap(),
            )
        };
        let (row_rounds, row_wise) = predict("force_row_wise=true");
        let (col_rounds, col_wise) = predict("force_col_wise=true");
        assert!(
            row_rounds > 5,
            "the fixture learns: best round {row_rounds}"
        );
        assert_eq!(row_rounds, col_rounds);
        let largest = row_wise
            .iter()
            .zip(&col_wise)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(largest < 1e-12, "predictions differ by {largest}");
    }

    /// LightGBM keeps its thread count in a process-wide variable that every call given
    /// parameters sets; a booster being built sizes per-thread buffers from it and then runs
    /// parallel loops that read it again. Boosters built while another thread switched between
    /// 1 and 8 threads crashed (SIGSEGV in `PushDataToMultiValBin`, seen with gdb): 19 runs of
    /// this test in 20 did before every such call took [`exclusive`].
    #[test]
    fn training_beside_calls_with_other_thread_counts_keeps_its_own() {
        let (csr, labels) = wide();
        let full = Dataset::from_csr(csr.view(), &labels, "verbosity=-1 num_threads=1").unwrap();
        let (train_set, valid_set) = first_1600_and_the_rest(&full);
        let rounds = Rounds {
            max: 3,
            early_stopping: 3,
        };
        let train = || train(&train_set, &valid_set, PARAMS, rounds, |_, _| {}).unwrap();
        let predict = |model: &Model| model.predict(csr.view(), "num_threads=1").unwrap();
        let alone = predict(&train().model);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let other = Dataset::from_csr(csr.view(), &labels, "verbosity=-1").unwrap();
                while !done.load(Ordering::Relaxed) {
                    for threads in ["num_threads=8", "num_threads=1"] {
                        other.subset(&[0, 1, 2], threads).unwrap();
                    }
                }
            });
            for _ in 0..40 {
                assert_eq!(predict(&train().model), alone);
            }
            done.store(true, Ordering::Relaxed);
        });
    }
}
