//! Integration tests of iccard-pos: one test binary, one module per area.

mod losslist;
mod metered;
mod sales;
mod support;
mod upload;
