//! Integration tests of iccard-terminal: one test binary, one module per area.

mod flows;
mod recovery;
mod support;
