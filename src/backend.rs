//! The one place that names concrete Burn backends. Everything else is generic over
//! `B: Backend` and receives its device and compute dtype from here.

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, DType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Burn's portable CPU backend (rayon + SIMD); default.
    #[default]
    Flex,
    /// NVIDIA GPU through burn-cuda (needs the `cuda` cargo feature and a driver).
    Cuda,
    /// Any Vulkan (or Metal) device through burn-wgpu, the same CubeCL kernels as burn-cuda
    /// (needs the `wgpu` cargo feature; on a machine without a GPU, Mesa's lavapipe is a Vulkan
    /// device on the CPU).
    Wgpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
    /// f32 on CPU, bf16 on CUDA.
    pub fn default_for(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Flex | BackendKind::Wgpu => Self::F32,
            BackendKind::Cuda => Self::Bf16,
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

/// How many sub-batches to run concurrently: one per CPU core (rayon's pool size, from the
/// runtime options) on flex, one on GPUs.
/// Whether tensors of `B` on `device` live in host memory: Burn's flex, also under autodiff.
pub fn on_host<B: burn::tensor::backend::Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name == "flex" || name == "autodiff<flex>"
}

pub fn workers_for(kind: BackendKind, cpu_threads: usize) -> usize {
    match kind {
        BackendKind::Flex => cpu_threads.max(1),
        BackendKind::Cuda | BackendKind::Wgpu => 1,
    }
}

/// `workers_for` with this process's runtime options.
pub fn default_workers(kind: BackendKind) -> usize {
    workers_for(kind, crate::runtime::current().cpu_threads)
}

/// Work that runs on any backend.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> Result<Self::Output>;
}

/// Work that needs gradients (training).
pub trait AutodiffTask {
    type Output;
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
        dtype: DType,
    ) -> Result<Self::Output>;
}

/// Run `task` on the chosen backend and precision.
pub fn dispatch<T: BackendTask>(
    kind: BackendKind,
    precision: Precision,
    task: T,
) -> Result<T::Output> {
    match kind {
        BackendKind::Flex => run_flex(precision, task),
        BackendKind::Cuda => run_cuda(precision, task),
        BackendKind::Wgpu => run_wgpu(precision, task),
    }
}

/// Run `task` on the chosen backend wrapped in Burn's autodiff.
pub fn dispatch_autodiff<T: AutodiffTask>(
    kind: BackendKind,
    precision: Precision,
    task: T,
) -> Result<T::Output> {
    match kind {
        BackendKind::Flex => {
            #[cfg(feature = "flex")]
            {
                type B = burn::backend::Autodiff<burn::backend::Flex>;
                return task.run::<B>(burn::backend::flex::FlexDevice, precision.dtype());
            }
            #[allow(unreachable_code)]
            {
                let _ = task;
                bail!("this build has no flex backend (rebuild with --features flex)")
            }
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = cuda_device()?;
                type B = burn::backend::Autodiff<burn::backend::Cuda>;
                return task.run::<B>(device, precision.dtype());
            }
            #[allow(unreachable_code)]
            {
                let _ = task;
                bail!("this build has no cuda backend (rebuild with --features cuda)")
            }
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let device = wgpu_device()?;
                type B = burn::backend::Autodiff<burn::backend::Wgpu>;
                return task.run::<B>(device, precision.dtype());
            }
            #[allow(unreachable_code)]
            {
                let _ = task;
                bail!(NO_WGPU)
            }
        }
    }
}

const NO_WGPU: &str = "this build has no wgpu backend (rebuild with --features wgpu)";

fn run_wgpu<T: BackendTask>(precision: Precision, task: T) -> Result<T::Output> {
    #[cfg(feature = "wgpu")]
    {
        let device = wgpu_device()?;
        return task.run::<burn::backend::Wgpu>(device, precision.dtype());
    }
    #[allow(unreachable_code)]
    {
        let _ = (precision, task);
        bail!(NO_WGPU)
    }
}

/// The default wgpu device, after checking that a tensor can be made and read back on it
/// (wgpu panics when no adapter exists: turned into an error naming what to install).
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Result<burn::backend::wgpu::WgpuDevice> {
    let device = burn::backend::wgpu::WgpuDevice::default();
    match probe::<burn::backend::Wgpu>(&device) {
        Ok(()) => Ok(device),
        Err(why) => bail!(
            "the wgpu backend is compiled in but no Vulkan/Metal adapter could be used ({why}); \
             install a Vulkan driver (on Debian, libvulkan1 and mesa-vulkan-drivers give lavapipe \
             on the CPU), or use --backend flex"
        ),
    }
}

/// Make a tensor on `device` and read 1 + 2 back. The GPU runtimes panic when a driver library,
/// a device or an adapter is missing: the panic's message (which names the library or the
/// device) becomes the error.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn probe<B: Backend>(device: &B::Device) -> std::result::Result<(), String> {
    use burn::tensor::{ElementConversion, Tensor};
    let probe_device = device.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0], &probe_device);
        t.sum().into_scalar().elem::<f64>()
    }));
    std::panic::set_hook(previous);
    match r {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(format!("the device computed 1 + 2 = {v}")),
        Err(p) => Err(panic_message(p.as_ref())),
    }
}

/// The text of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

fn run_flex<T: BackendTask>(precision: Precision, task: T) -> Result<T::Output> {
    #[cfg(feature = "flex")]
    {
        return task.run::<burn::backend::Flex>(burn::backend::flex::FlexDevice, precision.dtype());
    }
    #[allow(unreachable_code)]
    {
        let _ = (precision, task);
        bail!("this build has no flex backend (rebuild with --features flex)")
    }
}

fn run_cuda<T: BackendTask>(precision: Precision, task: T) -> Result<T::Output> {
    #[cfg(feature = "cuda")]
    {
        let device = cuda_device()?;
        return task.run::<burn::backend::Cuda>(device, precision.dtype());
    }
    #[allow(unreachable_code)]
    {
        let _ = (precision, task);
        bail!("this build has no cuda backend (rebuild with --features cuda)")
    }
}

/// The memory a job on `kind` may use, and where that number comes from: flex, this machine's
/// memory (MemTotal, or the cgroup's memory.max where lower, as under Slurm's --mem); cuda, the
/// total memory of the first GPU this process sees (CUDA_VISIBLE_DEVICES) as `nvidia-smi`
/// reports it; wgpu, unknown (set `memory_limit` in the pipeline).
pub fn device_memory(kind: BackendKind) -> Option<(u64, String)> {
    match kind {
        BackendKind::Flex => {
            let info = std::fs::read_to_string("/proc/meminfo").ok()?;
            let kib: u64 = info
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .trim_start_matches("MemTotal:")
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            let total = kib * 1024;
            let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            Some(match cgroup {
                Some(c) if c < total => (c, "this process's cgroup limit (memory.max)".into()),
                _ => (total, "this machine's memory (MemTotal)".into()),
            })
        }
        BackendKind::Cuda => {
            // device 0 of this process is the first of CUDA_VISIBLE_DEVICES (index or UUID)
            let id = std::env::var("CUDA_VISIBLE_DEVICES")
                .ok()
                .and_then(|v| v.split(',').next().map(|s| s.trim().to_string()))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "0".into());
            let out = std::process::Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.total",
                    "--format=csv,noheader,nounits",
                    &format!("--id={id}"),
                ])
                .output()
                .ok()?;
            let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            Some((mib << 20, format!("GPU {id}'s memory (nvidia-smi)")))
        }
        BackendKind::Wgpu => None,
    }
}

/// Whether `kind` can run here: Ok, or an error naming what is missing (the cargo feature, the
/// driver, the device). `run` asks before any job starts, so a pipeline for a GPU machine fails
/// at once (exit 2) on a machine without one instead of failing job after job.
pub fn check_available(kind: BackendKind) -> Result<()> {
    match kind {
        BackendKind::Flex => Ok(()),
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                cuda_device().map(|_| ())
            }
            #[cfg(not(feature = "cuda"))]
            {
                bail!(
                    "backend = \"cuda\": this build has no cuda backend (rebuild with --features cuda, \
                     on a machine with the NVIDIA driver); or use --set backend=flex for the CPU"
                )
            }
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                wgpu_device().map(|_| ())
            }
            #[cfg(not(feature = "wgpu"))]
            {
                bail!("backend = \"wgpu\": {NO_WGPU}; or use --set backend=flex for the CPU")
            }
        }
    }
}

/// The first CUDA device, after checking that a tensor can be made on it (cubecl panics when
/// the driver library or the device is missing; that becomes an error naming it).
#[cfg(feature = "cuda")]
fn cuda_device() -> Result<burn::backend::cuda::CudaDevice> {
    let device = burn::backend::cuda::CudaDevice::new(0);
    match cuda_driver_check().and_then(|()| probe::<burn::backend::Cuda>(&device)) {
        Ok(()) => Ok(device),
        Err(why) => bail!(
            "the cuda backend is compiled in but no usable CUDA device was found ({why}); is the \
             NVIDIA driver installed and a GPU visible (nvidia-smi)? Or use --backend flex"
        ),
    }
}

/// What burn-cuda needs before its first kernel, checked in order so that the error names the
/// first thing missing (cubecl's own panic happens on a worker thread, and only "RecvError"
/// reaches this one): the driver library, NVRTC (which compiles the kernels), a device.
#[cfg(feature = "cuda")]
fn cuda_driver_check() -> std::result::Result<(), String> {
    use cudarc::{driver, nvrtc};
    // SAFETY: each only tries to dlopen the library; nothing in it is called.
    if !unsafe { driver::sys::is_culib_present() } {
        return Err(
            "the CUDA driver library libcuda.so could not be loaded: no NVIDIA driver on \
                    this machine, or it is not on the library path"
                .into(),
        );
    }
    if !unsafe { nvrtc::sys::is_culib_present() } {
        return Err(
            "CUDA's runtime compiler libnvrtc.so, which compiles the kernels, could not \
                    be loaded: install NVRTC for the driver's CUDA version (the CUDA toolkit, or \
                    pip's nvidia-cuda-nvrtc) and put it on LD_LIBRARY_PATH"
                .into(),
        );
    }
    driver::result::init().map_err(|e| format!("cuInit failed: {e:?}"))?;
    match driver::result::device::get_count() {
        Ok(0) => Err("the driver sees no CUDA device".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cuDeviceGetCount failed: {e:?}")),
    }
}
