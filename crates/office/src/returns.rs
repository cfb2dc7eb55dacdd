//! The return of a card (lead's work in progress).
