//! iccard terminal run end to end (helper's work in progress).
