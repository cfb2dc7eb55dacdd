//! The point of use's integration tests (helper's work in progress).
