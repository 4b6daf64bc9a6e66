//! Kernels compiled without nvcc: NVRTC turns [`KERNELS`] (CUDA C) into a CUBIN for the device's architecture.
//!
//! NVRTC is found the way PyTorch and CuPy find it: a `libnvrtc.so.13` the dynamic loader already knows (system
//! CUDA, `LD_LIBRARY_PATH`, or loaded by another package), else one of the folders the caller passes (the Python
//! layer passes `site-packages/nvidia/cu13/lib` of the `nvidia-cuda-nvrtc` wheel, `$CUDA_HOME/lib64`, ...). The
//! wheel's libraries have no RUNPATH, so `libnvrtc-builtins` is loaded first, by absolute path; cudarc then finds
//! both by their SONAME. Every NVRTC symbol ferrolab calls is checked before the first cudarc call
//! ([`NVRTC_SYMBOLS`]): a missing one is an error, not a panic.
//!
//! A CUBIN (SASS for one architecture) rather than PTX is produced, because PTX from a newer NVRTC is refused by
//! an older driver. Compiled CUBINs are cached on disk by (source, NVRTC version, architecture, options).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The CUDA C source of every GPU kernel.
pub const KERNELS: &str = include_str!("kernels.cu");

/// The NVRTC symbols ferrolab calls (checked before the first call).
pub const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcDestroyProgram",
];

/// Options every kernel is compiled with (besides `-arch`): IEEE division and square root, no flush to zero, so
/// results match the CPU path; `-Xptxas -v` reports registers and spills.
pub const OPTIONS: &[&str] = &[
    "--std=c++17",
    "-default-device",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--fmad=true",
    "--ptxas-options=-v",
];

/// Where NVRTC was found and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Nvrtc {
    /// `(major, minor)`, e.g. `(13, 0)`.
    pub version: (i32, i32),
    /// The library's path, or its SONAME when the dynamic loader found it.
    pub library: String,
}

/// What ptxas reported for one kernel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u64,
    pub spill_loads: u64,
    pub stack_frame: u64,
}

/// A compiled module: the CUBIN, the compiler log and the per-kernel resource report.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub arch: String,
    pub cubin: Vec<u8>,
    pub log: String,
    pub kernels: Vec<KernelReport>,
}

static LOADED: OnceLock<Nvrtc> = OnceLock::new();
/// Libraries loaded by absolute path, kept for the life of the process (cudarc resolves them by SONAME).
static KEEP: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// Finds and loads NVRTC (once per process; later calls return the first success). `dirs` are searched, in
/// order, after the dynamic loader's own search.
pub fn load(dirs: &[PathBuf]) -> Result<&'static Nvrtc, String> {
    if let Some(n) = LOADED.get() {
        return Ok(n);
    }
    let found = find(dirs)?;
    Ok(LOADED.get_or_init(|| found))
}

fn find(dirs: &[PathBuf]) -> Result<Nvrtc, String> {
    // 1. the dynamic loader's search, with cudarc's own candidate names
    for name in cudarc::get_lib_name_candidates("nvrtc") {
        // SAFETY: loading NVRTC runs its initialisers, which have no preconditions.
        if let Ok(lib) = unsafe { libloading::Library::new(&name) } {
            check_symbols(&lib, &name)?;
            return finish(name, lib);
        }
    }
    // 2. the given folders: builtins first, then libnvrtc, by absolute path
    let mut tried = Vec::new();
    for dir in dirs {
        let Some(main) = newest(dir, "libnvrtc.so.") else {
            tried.push(dir.display().to_string());
            continue;
        };
        if let Some(builtins) = newest(dir, "libnvrtc-builtins.so.") {
            // SAFETY: as above; kept loaded so that libnvrtc finds it by SONAME.
            let b = unsafe { libloading::Library::new(&builtins) }.map_err(|e| {
                format!(
                    "cannot load {}: {}",
                    builtins.display(),
                    super::dl_error(&e)
                )
            })?;
            keep(b);
        }
        // SAFETY: as above.
        let lib = unsafe { libloading::Library::new(&main) }
            .map_err(|e| format!("cannot load {}: {}", main.display(), super::dl_error(&e)))?;
        let shown = main.display().to_string();
        check_symbols(&lib, &shown)?;
        return finish(shown, lib);
    }
    Err(format!(
        "NVRTC (libnvrtc.so.13) was not found: install it with `pip install nvidia-cuda-nvrtc` (searched the \
         dynamic loader's path{}{})",
        if tried.is_empty() { "" } else { " and " },
        tried.join(", ")
    ))
}

fn keep(lib: libloading::Library) {
    KEEP.lock().unwrap_or_else(|p| p.into_inner()).push(lib);
}

/// The `prefix*` file of `dir` with the longest name (`libnvrtc.so.13` over `libnvrtc.so`), if any.
fn newest(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut best: Option<PathBuf> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n.starts_with(prefix)
            && best
                .as_ref()
                .is_none_or(|b| b.as_os_str().len() < e.path().as_os_str().len())
        {
            best = Some(e.path());
        }
    }
    best
}

fn check_symbols(lib: &libloading::Library, name: &str) -> Result<(), String> {
    let missing: Vec<&str> = NVRTC_SYMBOLS
        .iter()
        .copied()
        // SAFETY: a symbol lookup only; the pointer is not called.
        .filter(|s| unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{name} lacks {}", missing.join(", ")))
    }
}

fn finish(library: String, lib: libloading::Library) -> Result<Nvrtc, String> {
    keep(lib);
    let version = guarded("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: the symbol is present (checked) and both are valid out pointers.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("nvrtcVersion failed: {:?}", e.0))?;
        Ok((major, minor))
    })?;
    Ok(Nvrtc { version, library })
}

/// Runs a cudarc call, turning a panic (a library that changed under us) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(format!(
            "{what}: NVRTC failed: {}",
            crate::error::panic_message(&*p)
        ))
    })
}

/// Compiles `source` for `arch` (e.g. `"sm_90"`) with [`OPTIONS`] and `defines`. NVRTC must be loaded
/// ([`load`]). A compile error is an `Err` with NVRTC's log.
pub fn compile(source: &str, arch: &str, defines: &[&str]) -> Result<Compiled, String> {
    let Some(nvrtc) = LOADED.get() else {
        return Err("NVRTC is not loaded".to_string());
    };
    let _ = nvrtc;
    let src = std::ffi::CString::new(source)
        .map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("-arch={arch}"));
    options.extend(defines.iter().map(|d| format!("-D{d}")));
    guarded("compile", || {
        use cudarc::nvrtc::{result, sys};
        let prog = result::create_program(&src, Some(c"ferrolab_kernels.cu"))
            .map_err(|e| format!("nvrtcCreateProgram failed: {:?}", e.0))?;
        // SAFETY: `prog` was created above and is destroyed once, below; `src` outlives it.
        let out = unsafe {
            let compiled = result::compile_program(prog, &options);
            let log = result::get_program_log(prog)
                .map(|l| {
                    let bytes: Vec<u8> = l
                        .iter()
                        .take_while(|c| **c != 0)
                        .map(|c| *c as u8)
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            let cubin = match compiled {
                Err(e) => Err(format!(
                    "compiling the kernels for {arch} failed ({:?}):\n{log}",
                    e.0
                )),
                Ok(()) => {
                    let mut size = 0usize;
                    sys::nvrtcGetCUBINSize(prog, &mut size)
                        .result()
                        .map_err(|e| format!("nvrtcGetCUBINSize failed: {:?}", e.0))
                        .and_then(|()| {
                            let mut buf = vec![0u8; size];
                            sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
                                .result()
                                .map_err(|e| format!("nvrtcGetCUBIN failed: {:?}", e.0))
                                .map(|()| buf)
                        })
                }
            };
            let _ = result::destroy_program(prog);
            cubin.map(|cubin| (cubin, log))
        };
        let (cubin, log) = out?;
        let kernels = parse_ptxas_log(&log);
        Ok(Compiled {
            arch: arch.to_string(),
            cubin,
            log,
            kernels,
        })
    })
}

/// The per-kernel report of `ptxas -v` lines:
/// `Compiling entry function 'k' for 'sm_90'`, `N bytes stack frame, N bytes spill stores, N bytes spill loads`,
/// `Used N registers, ...`.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    let num_before = |line: &str, what: &str| -> Option<u64> {
        let i = line.find(what)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelReport {
                name,
                ..KernelReport::default()
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("spill stores") {
                k.stack_frame = num_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if let Some(r) = line.split("Used ").nth(1) {
                k.registers = r
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_log_is_parsed_per_kernel() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'fl_sum_f32' for 'sm_90'\n\
                   ptxas info    : Function properties for fl_sum_f32\n\
                   ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 20 registers, used 1 barriers, 2048 bytes smem\n\
                   ptxas info    : Compiling entry function 'fl_axpy_f64' for 'sm_90'\n\
                   ptxas info    : Function properties for fl_axpy_f64\n\
                   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                   ptxas info    : Used 12 registers\n";
        let r = parse_ptxas_log(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelReport {
                name: "fl_sum_f32".into(),
                registers: 20,
                spill_stores: 4,
                spill_loads: 12,
                stack_frame: 8
            }
        );
        assert_eq!(r[1].name, "fl_axpy_f64");
        assert_eq!(r[1].registers, 12);
        assert_eq!(r[1].spill_stores, 0);
    }

    #[test]
    fn missing_nvrtc_is_an_error_naming_the_package() {
        // a folder without libnvrtc: only reached when the loader has none either (true on CPU-only CI)
        if cudarc::get_lib_name_candidates("nvrtc")
            .iter()
            // SAFETY: loading NVRTC if present; no preconditions.
            .any(|n| unsafe { libloading::Library::new(n) }.is_ok())
        {
            return;
        }
        let e = find(&[PathBuf::from("/nonexistent")]).unwrap_err();
        assert!(e.contains("pip install nvidia-cuda-nvrtc"), "{e}");
    }
}
