//! Device selection: `cpu` (the default, and what CI tests) or `cuda:N` (needs the binary
//! built with the `cuda` feature).
use candle_core::Device;

use crate::{Error, Result};

/// Makes glibc keep freed memory for reuse instead of returning it to the kernel. candle
/// allocates a fresh buffer for every CPU tensor, and glibc maps buffers over 128 KiB from the
/// kernel and unmaps them when freed, so every op paid page faults on new zeroed pages: with
/// this, base-size CPU inference ran 1.3× faster (BENCHMARKS.md). Process-wide, so only the
/// transformer's entry points call it; LightGBM's CV is left on the defaults.
pub fn reuse_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is safe to call at any time.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Parses `cpu`, `cuda` or `cuda:N` and opens the device.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::Invalid(format!("device {spec:?}: expected cpu, cuda or cuda:N"))
            })?,
        None => {
            return Err(Error::Invalid(format!(
                "device {spec:?}: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Invalid(format!(
            "device {spec}: this binary was built without CUDA; rebuild with `--features cuda` (see scripts/build_cuda.sh)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Invalid(format!("device {spec}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }
}
