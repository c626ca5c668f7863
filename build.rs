//! Build script: with the `cuda` feature, compiles every kernels/*.cu to a fatbin with nvcc and
//! writes `$OUT_DIR/kernel_images.rs`, which embeds the images by file stem. With `cuda-host`, the
//! same sources are compiled as C++ for the CPU instead (the host emulation, kernels/host/).
use std::path::{Path, PathBuf};
use std::process::{exit, Command};
use std::{env, fs, thread};

/// sm_90a machine code for the H200, plus compute_80 PTX that the driver JIT-compiles elsewhere.
const NVCC_FLAGS: &[&str] = &[
    "-fatbin",
    "-O3",
    "-std=c++17",
    "-lineinfo",
    "-gencode",
    "arch=compute_90a,code=sm_90a",
    "-gencode",
    "arch=compute_80,code=compute_80",
];

/// Printed when no nvcc is found.
const NO_NVCC: &str = "\
the `cuda` feature needs nvcc (CUDA 13.0); none in NVCC, CUDA_HOME, CUDA_PATH, PATH, .venv-cuda
or python3's site-packages. Install it from PyPI with `scripts/install-nvcc.sh` (found
automatically), or `pip install \"nvidia-cuda-nvcc==13.0.*\" \"nvidia-cuda-cccl==13.0.*\"
\"nvidia-nvvm==13.0.*\"` and set NVCC=<site-packages>/nvidia/cu13/bin/nvcc.";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if env::var_os("CARGO_FEATURE_CUDA_HOST").is_some() {
        #[cfg(feature = "cuda-host")]
        host::build();
        return;
    }
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed={}", kernels.display());

    let mut sources = Vec::new();
    let entries = fs::read_dir(&kernels).unwrap_or_else(|e| fail(&format!("kernels/: {e}")));
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") => println!("cargo:rerun-if-changed={}", path.display()),
            _ => {}
        }
    }
    sources.sort();
    let mut images = Vec::new();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let fatbin = out_dir.join(format!("{stem}.fatbin"));
        images.push((stem, fatbin));
    }
    if !sources.is_empty() {
        compile_all(&find_nvcc(&root), &kernels, &sources, &images);
    }

    let items: Vec<String> = images
        .iter()
        .map(|(stem, fatbin)| format!("({stem:?}, include_bytes!({:?}))", fatbin.to_string_lossy()))
        .collect();
    let code = format!(
        "/// Fatbin images of kernels/*.cu, by file stem.\n\
         pub static KERNEL_IMAGES: &[(&str, &[u8])] = &[{}];\n",
        items.join(", ")
    );
    fs::write(out_dir.join("kernel_images.rs"), code).expect("write kernel_images.rs");
}

/// Runs nvcc on all sources in parallel; on any failure prints nvcc's stderr and exits.
fn compile_all(nvcc: &Path, kernels: &Path, sources: &[PathBuf], images: &[(String, PathBuf)]) {
    let outputs: Vec<_> = thread::scope(|s| {
        let jobs: Vec<_> = sources
            .iter()
            .zip(images)
            .map(|(src, (_, fatbin))| {
                let mut cmd = Command::new(nvcc);
                cmd.args(NVCC_FLAGS)
                    .arg("-I")
                    .arg(kernels)
                    .arg("-o")
                    .arg(fatbin)
                    .arg(src);
                s.spawn(move || cmd.output())
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("nvcc thread"))
            .collect()
    });
    let mut failed = Vec::new();
    for (src, output) in sources.iter().zip(outputs) {
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let output =
            output.unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", nvcc.display())));
        if output.status.success() {
            continue;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!(
            "nvcc failed on kernels/{name} ({}):\n{stderr}",
            output.status
        );
        if stderr.contains("Unsupported .version") {
            eprintln!(
                "hint: nvcc's nvvm is newer than its ptxas; scripts/install-nvcc.sh pins both"
            );
        }
        failed.push(name);
    }
    if !failed.is_empty() {
        fail(&format!(
            "nvcc failed on {} (nvcc errors above)",
            failed.join(", ")
        ));
    }
}

/// nvcc from NVCC, CUDA_HOME, CUDA_PATH, PATH, ./.venv-cuda, then python3's `nvidia` package.
fn find_nvcc(root: &Path) -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC") {
        let nvcc = PathBuf::from(nvcc);
        if !nvcc.is_file() {
            fail(&format!("NVCC={} is not a file", nvcc.display()));
        }
        return nvcc;
    }
    let mut candidates: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(env::var_os)
        .map(|dir| Path::new(&dir).join("bin/nvcc"))
        .collect();
    let path = env::var_os("PATH").unwrap_or_default();
    candidates.extend(env::split_paths(&path).map(|dir| dir.join("nvcc")));
    if let Ok(dirs) = fs::read_dir(root.join(".venv-cuda/lib")) {
        let mut pythons: Vec<PathBuf> = dirs
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
            })
            .collect();
        pythons.sort();
        candidates.extend(
            pythons
                .iter()
                .map(|p| p.join("site-packages/nvidia/cu13/bin/nvcc")),
        );
    }
    let script =
        "import nvidia, os\nfor p in nvidia.__path__: print(os.path.join(p, 'cu13/bin/nvcc'))";
    if let Ok(out) = Command::new("python3").args(["-c", script]).output() {
        candidates.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from),
        );
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| fail(NO_NVCC))
}

/// Prints the message as cargo warnings and on stderr, then ends the build with exit status 1.
fn fail(message: &str) -> ! {
    for line in message.lines() {
        println!("cargo:warning={line}");
    }
    eprintln!("error: {message}");
    exit(1)
}

/// The `cuda-host` build: kernels/*.cu as C++ under kernels/host/'s shim, in one shared library that
/// the engine embeds and loads at run time (so `TWOSSP_HOST_KERNELS` can swap in a rebuilt copy, as
/// scripts/mutate-kernels.py does); the kernels register themselves from static initialisers.
#[cfg(feature = "cuda-host")]
mod host {
    use std::path::{Path, PathBuf};
    use std::{env, fs};

    /// Flags of the host build; misaligned accesses reach runtime.cpp's UBSan handler.
    pub const FLAGS: &[&str] = &[
        "-std=c++17",
        "-O2",
        "-DTWOSSP_HOST",
        "-fPIC",
        "-shared",
        "-Wl,-Bsymbolic",
        "-fsanitize=alignment",
        "-fno-strict-aliasing",
        "-Wno-unknown-pragmas",
    ];

    /// Kernel sources in a fixed order.
    fn sources(kernels: &Path) -> Vec<PathBuf> {
        let mut cu: Vec<PathBuf> = fs::read_dir(kernels)
            .expect("kernels/")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .collect();
        cu.sort();
        cu
    }

    pub fn build() {
        let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
        let kernels = root.join("kernels");
        println!("cargo:rerun-if-changed={}", kernels.display());
        println!("cargo:rerun-if-changed={}", kernels.join("host").display());
        for f in ["device.h", "runtime.cpp"] {
            println!(
                "cargo:rerun-if-changed={}",
                kernels.join("host").join(f).display()
            );
        }
        let cu = sources(&kernels);
        let library = out_dir.join("twossp_host_kernels.so");
        let compiler = cc::Build::new().cpp(true).get_compiler();
        let output = compiler
            .to_command()
            .args(FLAGS)
            .arg("-I")
            .arg(&kernels)
            .arg("-o")
            .arg(&library)
            .arg("-x")
            .arg("c++")
            .args(&cu)
            .arg(kernels.join("host/runtime.cpp"))
            .output()
            .unwrap_or_else(|e| super::fail(&format!("cannot run the C++ compiler: {e}")));
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            super::fail("the host build of kernels/ failed (compiler errors above)");
        }
        // For scripts/mutate-kernels.py, which rebuilds the library from mutated copies of kernels/.
        let command = format!(
            "{{\"compiler\": {:?}, \"flags\": [{}]}}\n",
            compiler.path().to_string_lossy(),
            compiler
                .args()
                .iter()
                .map(|a| format!("{:?}", a.to_string_lossy()))
                .chain(FLAGS.iter().map(|f| format!("{f:?}")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        fs::write(out_dir.join("host_kernels_command.json"), command)
            .expect("write host_kernels_command.json");
        let stems: Vec<String> = cu
            .iter()
            .map(|p| format!("{:?}", p.file_stem().unwrap().to_string_lossy()))
            .collect();
        let code = format!(
            "/// The kernel files of the host build, by stem.\n\
             pub static KERNEL_FILES: &[&str] = &[{}];\n\
             /// The host build of the kernels: a shared library, loaded at run time.\n\
             pub static HOST_KERNELS: &[u8] = include_bytes!({:?});\n",
            stems.join(", "),
            library.to_string_lossy()
        );
        fs::write(out_dir.join("kernel_images.rs"), code).expect("write kernel_images.rs");
    }
}
