//! Returns of cards (lead's work in progress).
