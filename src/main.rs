//! The `twossp-engine` command line.

fn main() {
    println!("twossp-engine {}", env!("CARGO_PKG_VERSION"));
}
