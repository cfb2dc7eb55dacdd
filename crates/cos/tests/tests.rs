//! Integration tests of iccard-cos: one test binary, one module per area.

mod brute;
mod endurance;
mod figures;
mod golden;
mod nvm;
mod props;
mod psam;
mod purse;
mod tear;
mod transcript;
mod transcripts;
