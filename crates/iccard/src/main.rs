//! The `iccard` command line.
fn main() {}
