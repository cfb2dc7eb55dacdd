//! The office's card stages through pcscd + vpcd (helper's work in progress).
