//! Integration tests of iccard-apdu: data-driven command tables and property tests.

mod props;
mod table;
