//! Integration tests of iccard-issuer: one test binary, one module per area.

mod purse_flow;
