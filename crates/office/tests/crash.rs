//! SIGKILL crash tests of ledger postings (being written).
