//! Ledger postings per second beside a TPC-B-like baseline (placeholder filled by the bench author).
fn main() {}
