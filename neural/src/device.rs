//! Device selection: `cpu` (the default, and what CI tests) or `cuda:N` (needs the binary
//! built with the `cuda` feature).
use candle_core::Device;

use crate::{Error, Precision, Result};

/// Makes glibc keep freed memory for reuse instead of returning it to the kernel. candle
/// allocates a fresh buffer for every CPU tensor, and glibc maps buffers over 128 KiB from the
/// kernel and unmaps them when freed, so every op paid page faults on new zeroed pages: with
/// this, base-size CPU inference ran 1.3× faster, and DeBERTa's CPU training 1.13–1.17× once no
/// buffer was mapped (BENCHMARKS.md). Process-wide, so only the transformer's entry points
/// call it; LightGBM's CV is left on the defaults.
///
/// It also keeps every thread on glibc's main arena. The thresholds hold there, but a thread
/// off the main thread (the rayon worker that `on_compute_thread` runs CPU folds on) would get
/// an arena of its own, made of 64 MiB heaps that glibc shrinks when memory is freed: DeBERTa's
/// CPU inference ran 15% slower on such a thread, and as fast as on the main thread with one
/// arena.
pub fn reuse_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it is safe to call at any time.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets, and larger
        // buffers (DeBERTa's `[4, 12, 512, 512]` f32 scores are 48 MiB) were still mapped
        // anew each time: no mapping at all keeps them in the heap too (glibc still maps when
        // the heap cannot grow).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs `work` for a run on the device `spec` names, on the thread where candle runs it
/// fastest, and returns its result. For the CPU that is a thread of rayon's global pool, the
/// calling thread waiting: candle's CPU matmuls (gemm) split their work over that pool, and
/// from a thread outside it each of gemm's parallel sections (several per matmul, thousands
/// per training step) is handed to a worker while the caller sleeps; from a worker, the
/// section starts in place and the other workers join in. The LLM bench ran 8–24% faster so
/// on 2 cores, DeBERTa's within noise (BENCHMARKS.md). rayon's `scope` runs its closure on a pool thread when called from outside
/// the pool (rayon-core's `in_worker`); `cpu_work_runs_on_a_pool_thread` checks it. A GPU run
/// stays on the calling thread, where its CUDA context was made: the pool would gain it nothing.
pub fn on_compute_thread<R: Send>(spec: &str, work: impl FnOnce() -> R + Send) -> R {
    match names_cpu(spec) {
        true => rayon::scope(|_| work()),
        false => work(),
    }
}

/// Whether a `--device` spec names the CPU, as `parse_device` reads it.
fn names_cpu(spec: &str) -> bool {
    spec.trim().eq_ignore_ascii_case("cpu")
}

/// Parses `cpu`, `cuda` or `cuda:N` and opens the device.
pub fn parse_device(spec: &str) -> Result<Device> {
    if names_cpu(spec) {
        return Ok(Device::Cpu);
    }
    let spec = spec.trim().to_ascii_lowercase();
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
    open_cuda(&spec, ordinal)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(spec: &str, _ordinal: usize) -> Result<Device> {
    Err(Error::Invalid(format!(
        "device {spec}: this binary was built without CUDA; install the CUDA wheel, \
         arena-ensemble-cuda12 (scripts/package.sh --cuda), or build with scripts/build_cuda.sh"
    )))
}

/// Opens GPU `ordinal` after checking, each with a one-line error, that the CUDA libraries
/// and the driver load (crate::cuda_libraries), that the driver sees that GPU, and that the
/// kernels run on it (compute capability 7.0 or newer).
#[cfg(feature = "cuda")]
fn open_cuda(spec: &str, ordinal: usize) -> Result<Device> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let fail = |what: String| Error::Invalid(format!("device {spec}: {what}"));
    crate::cuda_libraries::load().map_err(fail)?;
    let count = CudaContext::device_count().map_err(|e| {
        fail(format!(
            "the NVIDIA driver loads but finds no usable GPU ({e})"
        ))
    })?;
    let count = usize::try_from(count).unwrap_or(0);
    if ordinal >= count {
        return Err(fail(match count {
            0 => "the NVIDIA driver sees no GPU".into(),
            1 => "the NVIDIA driver sees 1 GPU: cuda:0".into(),
            n => format!("the NVIDIA driver sees {n} GPUs: cuda:0 to cuda:{}", n - 1),
        }));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| fail(e.to_string()))?;
    if let Some((name, capability)) = gpu(&device)? {
        if let Some(why) = gpu_refusal(&name, capability, None) {
            return Err(fail(why));
        }
    }
    Ok(device)
}

/// The GPU's name and compute capability; None on the CPU.
#[cfg(feature = "cuda")]
fn gpu(device: &Device) -> Result<Option<(String, (i32, i32))>> {
    let Device::Cuda(cuda) = device else {
        return Ok(None);
    };
    let context = cuda.cuda_stream().context().clone();
    let asked = |e: candle_core::cuda_backend::cudarc::driver::DriverError| {
        Error::Invalid(format!("the CUDA driver's description of the GPU: {e}"))
    };
    let name = context.name().map_err(asked)?;
    let capability = context.compute_capability().map_err(asked)?;
    Ok(Some((name, capability)))
}

#[cfg(not(feature = "cuda"))]
fn gpu(_device: &Device) -> Result<Option<(String, (i32, i32))>> {
    Ok(None)
}

/// The oldest GPUs the CUDA build's kernels run on (Volta; its PTX is compute_70,
/// scripts/build_cuda.sh): on a P100 (6.0) the first kernel launch would fail.
const OLDEST_CAPABILITY: (i32, i32) = (7, 0);
/// bf16 arithmetic arrives with Ampere (candle compiles its bf16 kernels for ≥ 8.0 only).
const BF16_CAPABILITY: (i32, i32) = (8, 0);

/// Why the GPU `name` of compute `capability` cannot run this build's kernels, or `precision`,
/// in one line; None where it can.
fn gpu_refusal(name: &str, capability: (i32, i32), precision: Option<Precision>) -> Option<String> {
    let (major, minor) = capability;
    if capability < OLDEST_CAPABILITY {
        return Some(format!(
            "{name} has compute capability {major}.{minor}; the CUDA kernels need 7.0 or newer \
             (Volta, T4, A100, H100): use --device cpu"
        ));
    }
    if precision == Some(Precision::Bf16) && capability < BF16_CAPABILITY {
        return Some(format!(
            "{name} has compute capability {major}.{minor}, without bf16 (8.0 or newer: A100, \
             H100): set --precision f16 (with loss scaling) or f32"
        ));
    }
    None
}

/// Refuses, in one line, a `precision` the device opened from `spec` (`cuda:0`, as the user
/// wrote it: candle's device names a counter, not the GPU) cannot run: bf16 below compute
/// capability 8.0, as on a T4. The CPU runs every precision.
pub fn check_precision(spec: &str, device: &Device, precision: Precision) -> Result<()> {
    match gpu(device)? {
        Some((name, capability)) => match gpu_refusal(&name, capability, Some(precision)) {
            Some(why) => Err(Error::Invalid(format!("device {spec}: {why}"))),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Bytes free for new tensors on `device`, where it can say: on the CPU `MemAvailable` of
/// `/proc/meminfo` (what can be allocated without swapping), on CUDA the driver's free memory.
/// None where neither is known (another OS), and the memory check is then skipped.
pub fn free_memory(device: &Device) -> Result<Option<u64>> {
    match device {
        Device::Cpu => Ok(std::fs::read_to_string("/proc/meminfo")
            .ok()
            .as_deref()
            .and_then(mem_available)),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, _total) = cuda
                .cuda_stream()
                .context()
                .mem_get_info()
                .map_err(|e| Error::Invalid(format!("the CUDA device's free memory: {e}")))?;
            Ok(Some(free as u64))
        }
        _ => Ok(None),
    }
}

/// The process's peak resident memory so far (`VmHWM` of `/proc/self/status`) in MiB; NaN
/// where the system does not say. The benchmarks' memory figure.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// The process's resident memory now (`VmRSS`), in MiB; NaN where the system does not say.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A `/proc/self/status` field given in kB, in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_work_runs_on_a_pool_thread() {
        // A test thread is outside every pool; CPU work must move into the global one.
        assert_eq!(rayon::current_thread_index(), None);
        let caller = std::thread::current().id();
        let here = || (rayon::current_thread_index(), std::thread::current().id());
        let (index, thread) = on_compute_thread(" CPU ", here);
        assert!(index.is_some(), "the work ran outside rayon's pool");
        assert_ne!(thread, caller);
        // From a pool thread it runs in place.
        let nested = on_compute_thread("cpu", || {
            let outer = std::thread::current().id();
            on_compute_thread("cpu", || std::thread::current().id()) == outer
        });
        assert!(nested);
        // A GPU spec keeps the caller's thread (no device is opened).
        assert_eq!(on_compute_thread("cuda:0", here), (None, caller));
    }

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }

    #[test]
    fn reads_mem_available_in_bytes() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(meminfo), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }

    /// A P100 is refused whatever the precision, a T4 for bf16 only, naming the flag; an A100
    /// runs all three.
    #[test]
    fn gpus_are_refused_below_their_kernels_and_bf16() {
        let p100 = gpu_refusal("Tesla P100-PCIE-16GB", (6, 0), Some(Precision::F32)).unwrap();
        assert!(
            p100.contains("Tesla P100-PCIE-16GB has compute capability 6.0"),
            "{p100}"
        );
        assert!(gpu_refusal("Tesla P100", (6, 1), None).is_some());
        let t4 = gpu_refusal("Tesla T4", (7, 5), Some(Precision::Bf16)).unwrap();
        assert!(t4.contains("7.5") && t4.contains("--precision f16"), "{t4}");
        assert_eq!(gpu_refusal("Tesla T4", (7, 5), Some(Precision::F16)), None);
        assert_eq!(gpu_refusal("Tesla T4", (7, 5), None), None);
        assert_eq!(
            gpu_refusal("Tesla V100", (7, 0), Some(Precision::F32)),
            None
        );
        for precision in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(gpu_refusal("NVIDIA A100", (8, 0), Some(precision)), None);
        }
        // The CPU runs every precision.
        assert!(check_precision("cpu", &Device::Cpu, Precision::Bf16).is_ok());
    }
}
