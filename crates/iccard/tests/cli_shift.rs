//! `iccard office shift` end to end (helper work in progress).
