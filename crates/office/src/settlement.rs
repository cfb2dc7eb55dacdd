//! settlement (helper's work in progress).
