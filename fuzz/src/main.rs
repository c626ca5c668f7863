//! One AFL++ harness for every target of `twossp_engine::fuzzing`, chosen by
//! `TWOSSP_FUZZ_TARGET` (gguf, safetensors, config, tokenizer_json, data).

fn main() {
    let target = std::env::var("TWOSSP_FUZZ_TARGET").unwrap_or_default();
    if !twossp_engine::fuzzing::TARGETS.iter().any(|(n, _)| *n == target) {
        let names: Vec<&str> = twossp_engine::fuzzing::TARGETS.iter().map(|t| t.0).collect();
        eprintln!("error: set TWOSSP_FUZZ_TARGET to one of {}", names.join(", "));
        std::process::exit(2);
    }
    afl::fuzz!(|data: &[u8]| {
        twossp_engine::fuzzing::run_target(&target, data);
    });
}
