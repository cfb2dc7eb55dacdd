//! Shifts (helper's work in progress).
