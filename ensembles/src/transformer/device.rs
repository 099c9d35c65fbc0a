//! Device selection: `cpu` (the default, and what CI tests) or `cuda:N` (needs the binary
//! built with the `cuda` feature).
use candle_core::Device;

use crate::{Error, Result};

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
