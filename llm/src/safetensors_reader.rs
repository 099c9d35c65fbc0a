//! Safetensors files read tensor by tensor with positioned reads, for the 8-bit base: each
//! tensor (or block of rows) is copied from its file into a buffer of its own size and
//! dropped once converted. Memory-mapping (candle's `from_mmaped_safetensors`) would keep
//! every page it touched resident, as part of the process, until the mapping goes: for a 9B
//! base the dense bytes the 8-bit load exists to avoid. Written by hand because candle's
//! readers all map or read whole files; the format is a length, a JSON header and the data.
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use candle_core::{DType, Device, Shape, Tensor};

use crate::{Error, Result};

/// Where a tensor's bytes are: its file, dtype, shape and byte range there.
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// The tensors of a model's weight files, by name.
pub struct SafetensorsReader {
    files: Vec<(PathBuf, std::fs::File)>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsReader {
    /// Reads the headers of `paths` (a name in several files: the last wins, as candle's).
    pub fn open(paths: &[PathBuf]) -> Result<SafetensorsReader> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(Error::io(path))?;
            let bad = |message: String| Error::BadModelFile {
                path: path.clone(),
                message,
            };
            let size = file.metadata().map_err(Error::io(path))?.len();
            let mut length = [0u8; 8];
            file.read_exact_at(&mut length, 0)
                .map_err(Error::io(path))?;
            let length = u64::from_le_bytes(length);
            if length > size.saturating_sub(8) {
                return Err(bad(format!(
                    "a safetensors header of {length} bytes in a file of {size}"
                )));
            }
            let mut header = vec![0u8; length as usize];
            file.read_exact_at(&mut header, 8)
                .map_err(Error::io(path))?;
            let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
                .map_err(|e| bad(format!("safetensors header: {e}")))?;
            let data = 8 + length;
            for (name, value) in header {
                if name == "__metadata__" {
                    continue;
                }
                let entry = parse_entry(&name, &value, index, data)
                    .map_err(|message| bad(format!("{name}: {message}")))?;
                let bytes = entry.shape.iter().product::<usize>() * entry.dtype.size_in_bytes();
                if entry.end - entry.start != bytes as u64 || entry.end > size {
                    return Err(bad(format!(
                        "{name}: bytes {}..{} do not hold a {:?} {:?} within the file's {size}",
                        entry.start, entry.end, entry.dtype, entry.shape
                    )));
                }
                entries.insert(name, entry);
            }
            files.push((path.clone(), file));
        }
        Ok(SafetensorsReader { files, entries })
    }

    fn entry(&self, name: &str) -> candle_core::Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() }.bt())
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> candle_core::Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    /// Rows `start..start + rows` of tensor `name` (its first dimension), as stored, on the
    /// CPU.
    pub fn rows(&self, name: &str, start: usize, rows: usize) -> candle_core::Result<Tensor> {
        let entry = self.entry(name)?;
        let Some((&all, rest)) = entry.shape.split_first() else {
            candle_core::bail!("{name} is a scalar: it has no rows");
        };
        if start + rows > all {
            candle_core::bail!("{name}: rows {start}..{} of {all}", start + rows);
        }
        let row_bytes = rest.iter().product::<usize>() * entry.dtype.size_in_bytes();
        let shape: Vec<usize> = std::iter::once(rows).chain(rest.iter().copied()).collect();
        self.read(entry, (start * row_bytes) as u64, &shape)
    }

    /// The tensor of `shape` whose bytes start `skip` bytes into `entry`'s.
    fn read(&self, entry: &Entry, skip: u64, shape: &[usize]) -> candle_core::Result<Tensor> {
        let (path, file) = &self.files[entry.file];
        let mut bytes = vec![0u8; shape.iter().product::<usize>() * entry.dtype.size_in_bytes()];
        file.read_exact_at(&mut bytes, entry.start + skip)
            .map_err(|e| candle_core::Error::from(e).with_path(path))?;
        Tensor::from_raw_buffer(&bytes, entry.dtype, shape, &Device::Cpu)
    }
}

fn parse_entry(
    name: &str,
    value: &serde_json::Value,
    file: usize,
    data: u64,
) -> std::result::Result<Entry, String> {
    let dtype = match value["dtype"].as_str() {
        Some("BF16") => DType::BF16,
        Some("F16") => DType::F16,
        Some("F32") => DType::F32,
        Some("F64") => DType::F64,
        Some("U8") => DType::U8,
        Some("U32") => DType::U32,
        Some("I64") => DType::I64,
        other => return Err(format!("dtype {other:?} is not read")),
    };
    let shape: Vec<usize> =
        serde_json::from_value(value["shape"].clone()).map_err(|e| format!("shape: {e}"))?;
    let offsets: [u64; 2] = serde_json::from_value(value["data_offsets"].clone())
        .map_err(|e| format!("data_offsets: {e}"))?;
    if offsets[0] > offsets[1] {
        return Err(format!("data_offsets {offsets:?} of {name} run backwards"));
    }
    Ok(Entry {
        file,
        dtype,
        shape,
        start: data + offsets[0],
        end: data + offsets[1],
    })
}

/// The reader as a `VarBuilder` backend: each tensor read when it is asked for, converted to
/// the asked dtype, moved to the device, its bytes dropped.
impl candle_nn::var_builder::SimpleBackend for SafetensorsReader {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _hints: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let entry = self.entry(name)?;
        self.read(entry, 0, &entry.shape)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tensor of a fixture reads as candle's own reader reads it, bit for bit.
    #[test]
    fn tensors_read_as_candle_reads_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-llm-gemma2");
        let path = dir.join("model.safetensors");
        let reader = SafetensorsReader::open(std::slice::from_ref(&path)).unwrap();
        let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert!(!theirs.is_empty());
        for (name, tensor) in theirs {
            use candle_nn::var_builder::SimpleBackend;
            let ours = reader
                .get_unchecked(&name, tensor.dtype(), &Device::Cpu)
                .unwrap();
            assert_eq!(ours.shape(), tensor.shape(), "{name}");
            let bits = |t: &Tensor| {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            };
            assert_eq!(bits(&ours), bits(&tensor), "{name}");
            let half = ours.dim(0).unwrap() / 2;
            if half > 0 {
                let rows = reader.rows(&name, half, 1).unwrap();
                assert_eq!(
                    bits(&rows),
                    bits(&tensor.narrow(0, half, 1).unwrap()),
                    "{name}"
                );
            }
        }
    }
}
