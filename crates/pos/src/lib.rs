//! # iccard-pos: the offline point of use (helper's work in progress)
