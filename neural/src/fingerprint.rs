//! A fingerprint of the files a model is made of (weights, `config.json`, tokenizer), which a
//! fold records so that nothing trained on one base is applied to, or merged with, another:
//! xxh3 over every byte of every file. Files are read in chunks, hashed in parallel, and the
//! chunks' digests (with each file's name and size) hashed again, so that a multi-gigabyte
//! base costs about a read of its files from the page cache (BENCHMARKS.md).
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::{Error, Result};

/// Bytes per chunk hashed on its own.
const CHUNK: u64 = 32 << 20;

/// The version of the scheme, first in every fingerprint: a fingerprint of another form
/// (an older version's samples) is told apart from a different base.
pub const FINGERPRINT_SCHEME: &str = "xxh3-all";

/// The fingerprint of `files`, in the order given (a missing file is an error naming it).
pub fn fingerprint_files(files: &[PathBuf]) -> Result<String> {
    let sizes = files
        .iter()
        .map(|path| Ok(std::fs::metadata(path).map_err(Error::io(path))?.len()))
        .collect::<Result<Vec<u64>>>()?;
    let chunks_of = |size: u64| size.div_ceil(CHUNK).max(1);
    let chunks: Vec<(usize, u64)> = sizes
        .iter()
        .enumerate()
        .flat_map(|(file, &size)| (0..chunks_of(size)).map(move |k| (file, k * CHUNK)))
        .collect();
    let digests = chunks
        .par_iter()
        // One buffer per thread, filled again for each of its chunks.
        .map_init(Vec::new, |buffer, &(file, offset)| {
            hash_chunk(&files[file], offset, sizes[file], buffer)
        })
        .collect::<Result<Vec<u64>>>()?;
    let mut hasher = Xxh3::new();
    let mut first = 0;
    for (path, &size) in files.iter().zip(&sizes) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update(&size.to_le_bytes());
        // This file's chunks, in order: the chunks were listed file by file.
        let count = chunks_of(size) as usize;
        for digest in &digests[first..first + count] {
            hasher.update(&digest.to_le_bytes());
        }
        first += count;
    }
    Ok(format!("{FINGERPRINT_SCHEME}:{:016x}", hasher.digest()))
}

/// xxh3 of the chunk of `path` at `offset` (at most [`CHUNK`] bytes, fewer at the end).
fn hash_chunk(path: &Path, offset: u64, size: u64, buffer: &mut Vec<u8>) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    buffer.resize(CHUNK.min(size.saturating_sub(offset)) as usize, 0);
    file.read_exact_at(buffer, offset)
        .map_err(Error::io(path))?;
    Ok(xxh3_64(buffer))
}

/// The files of a model folder that exist among `names`, in that order: the config and
/// tokenizer files a fingerprint covers besides the weights.
pub fn existing_files(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Flipping one byte anywhere in an 8 MiB file (first, last, a chunk boundary, random
    /// places) changes the fingerprint; flipping it back restores it.
    #[test]
    fn flipping_any_byte_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        let config = dir.path().join("config.json");
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut bytes = vec![0u8; 8 << 20];
        rng.fill(bytes.as_mut_slice());
        std::fs::write(&weights, &bytes).unwrap();
        std::fs::write(&config, b"{\"hidden_size\": 8}").unwrap();
        let files = [weights.clone(), config.clone()];
        let original = fingerprint_files(&files).unwrap();
        assert!(original.starts_with("xxh3-all:"), "{original}");
        let mut places = vec![0, bytes.len() - 1, bytes.len() / 2];
        places.extend((0..8).map(|_| rng.random_range(0..bytes.len())));
        for place in places {
            bytes[place] ^= 0x01;
            std::fs::write(&weights, &bytes).unwrap();
            assert_ne!(fingerprint_files(&files).unwrap(), original, "byte {place}");
            bytes[place] ^= 0x01;
        }
        std::fs::write(&weights, &bytes).unwrap();
        assert_eq!(fingerprint_files(&files).unwrap(), original);
        // The config counts too, and so does the order of the files.
        std::fs::write(&config, b"{\"hidden_size\": 9}").unwrap();
        assert_ne!(fingerprint_files(&files).unwrap(), original);
        let missing = fingerprint_files(&[dir.path().join("nothing")]).unwrap_err();
        assert!(missing.to_string().contains("nothing"), "{missing}");
    }
}
