//! Development helper: `cargo run --release --example gguf_import -- MODEL.gguf OUT_DIR [--force]`.

use std::path::Path;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let force = args.iter().any(|a| a == "--force");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [src, out] = paths.as_slice() else {
        anyhow::bail!("usage: gguf_import MODEL.gguf OUT_DIR [--force]");
    };
    let start = Instant::now();
    let summary = twossp_engine::gguf::import(Path::new(src), Path::new(out), force)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!("import took {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
