//! Each distinct text embedded once, and kept on disk for the next run.
//!
//! The cache is one file per encoder fingerprint, `<dir>/<fingerprint>.emb`: records of a
//! text's 64-bit xxh3 hash (little-endian) followed by its `dim` f32 values (little-endian),
//! appended after every run that embedded new texts. A torn last record (a run killed while
//! writing) is ignored. Texts are told apart by their hash alone; with 64 bits, a collision
//! among a million texts has a chance of about 3e-8.
use crate::{Error, Result, SentenceEncoder};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Texts embedded between two writes to the cache.
const SAVE_EVERY: usize = 2048;

fn text_key(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// The embeddings an encoder has made before.
struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    vectors: HashMap<u64, Vec<f32>>,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache of the encoder with `fingerprint` in `dir`.
    fn open(dir: &Path, fingerprint: &str, dim: usize) -> Result<EmbeddingCache> {
        let path = dir.join(format!("{fingerprint}.emb"));
        let mut vectors = HashMap::new();
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|cause| Error::Io {
                path: path.clone(),
                cause,
            })?;
            let record = 8 + 4 * dim;
            for chunk in bytes.chunks_exact(record) {
                let key = u64::from_le_bytes(chunk[..8].try_into().expect("8 bytes"));
                let vector = chunk[8..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                vectors.insert(key, vector);
            }
        }
        Ok(EmbeddingCache { path, dim, vectors })
    }

    /// Adds new embeddings to the file (not to the map: the run that adds them has them).
    fn append<'v>(&self, new: impl ExactSizeIterator<Item = (u64, &'v [f32])>) -> Result<()> {
        if new.len() == 0 {
            return Ok(());
        }
        let io = |cause| Error::Io {
            path: self.path.clone(),
            cause,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut bytes = Vec::with_capacity(new.len() * (8 + 4 * self.dim));
        for (key, vector) in new {
            bytes.extend_from_slice(&key.to_le_bytes());
            for value in vector {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        // A torn record from an earlier crash would misalign everything after it: cut it off.
        let record = (8 + 4 * self.dim) as u64;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        if length % record != 0 {
            file.set_len(length - length % record).map_err(io)?;
        }
        file.write_all(&bytes).map_err(io)
    }
}

/// What [`embed_cached`] did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EmbedStats {
    pub texts: usize,
    pub distinct: usize,
    pub from_cache: usize,
    pub embedded: usize,
    /// Seconds spent embedding (tokenizing included), cache reads excluded.
    pub seconds: f64,
}

/// Embeddings for a list of texts: `vector(i)` is text i's.
pub struct Embeddings {
    vectors: Vec<Vec<f32>>,
    index: Vec<usize>,
}

impl Embeddings {
    pub fn vector(&self, text: usize) -> &[f32] {
        &self.vectors[self.index[text]]
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Embeds `texts`: each distinct text once, reading from and adding to the cache in
/// `cache_dir` when one is given. `progress(done, total)` counts the texts being embedded.
pub fn embed_cached(
    encoder: &SentenceEncoder,
    cache_dir: Option<&Path>,
    texts: &[&str],
    mut progress: impl FnMut(usize, usize),
) -> Result<(Embeddings, EmbedStats)> {
    let mut cache = match cache_dir {
        Some(dir) => Some(EmbeddingCache::open(
            dir,
            encoder.fingerprint(),
            encoder.dim(),
        )?),
        None => None,
    };
    let mut slot_of: HashMap<u64, usize> = HashMap::new();
    let mut keys = Vec::new();
    let mut firsts = Vec::new();
    let index: Vec<usize> = texts
        .iter()
        .map(|text| {
            let key = text_key(text);
            *slot_of.entry(key).or_insert_with(|| {
                keys.push(key);
                firsts.push(*text);
                keys.len() - 1
            })
        })
        .collect();
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); keys.len()];
    let mut missing = Vec::new();
    for (slot, key) in keys.iter().enumerate() {
        // Taken, not copied: each key has one slot, and the map is not needed afterwards.
        match cache.as_mut().and_then(|c| c.vectors.remove(key)) {
            Some(vector) => vectors[slot] = vector,
            None => missing.push(slot),
        }
    }
    // Shortest texts first, in chunks that each go to the cache as soon as they are done:
    // a run stopped halfway keeps what it embedded.
    missing.sort_by_key(|&slot| (firsts[slot].len(), slot));
    let started = Instant::now();
    let total = missing.len();
    let mut done = 0;
    for chunk in missing.chunks(SAVE_EVERY) {
        let chunk_texts: Vec<&str> = chunk.iter().map(|&slot| firsts[slot]).collect();
        let embedded = encoder.embed(&chunk_texts, |in_chunk| progress(done + in_chunk, total))?;
        done += chunk.len();
        for (&slot, vector) in chunk.iter().zip(embedded) {
            vectors[slot] = vector;
        }
        if let Some(cache) = &cache {
            cache.append(
                chunk
                    .iter()
                    .map(|&slot| (keys[slot], vectors[slot].as_slice())),
            )?;
        }
    }
    let stats = EmbedStats {
        texts: texts.len(),
        distinct: keys.len(),
        from_cache: keys.len() - total,
        embedded: total,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((Embeddings { vectors, index }, stats))
}
