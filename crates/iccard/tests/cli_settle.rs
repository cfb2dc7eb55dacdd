//! iccard office settlement end to end (helper's work in progress).
