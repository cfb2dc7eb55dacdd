//! Settlement tests (helper's work in progress).
