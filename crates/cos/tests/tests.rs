//! Integration tests of iccard-cos: one test binary, one module per area.

mod endurance;
mod nvm;
mod psam;
mod purse;
