//! upload (helper's work in progress).
