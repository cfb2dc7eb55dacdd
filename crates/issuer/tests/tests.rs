//! Integration tests of iccard-issuer: one test binary, one module per area.

mod perso_tear;
mod purse_flow;
